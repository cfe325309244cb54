//! Behaviour tests: every "Traffic" rule of upstream kube-proxy's nftables mode, checked
//! through the packet tracer on the rendered ruleset (what a new connection does, not what
//! the rule text says), for IPv4 and IPv6 alike.
//!
//! One fixture cluster is generated for either family from the same logical layout: node
//! `node-a` (zone-a) with pods `A*`, remote pods `B*` on node-b (zone-b) and `C*` on node-c
//! (zone-a), services `S*` in the service CIDR, external/LB addresses `E*`, outside clients
//! `O*` (inside loadBalancerSourceRanges) and `X*` (outside them).

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;

use kproxy::model::{EndpointAddr, Objects};
use kproxy::nft::{AffinityStep, Family, Protocol, Ruleset, Stmt};
use kproxy::testutil::fixtures::{self as fx, EndpointBuilder, ServiceBuilder};
use kproxy::trace::{trace, Host, Origin, Probe, Trace, TraceVerdict};

/// Logical address → concrete address of the family.
fn ip(f: Family, logical: &str) -> IpAddr {
    let (kind, n) = logical.split_at(1);
    let n: u16 = n.parse().expect("number");
    let s = match (f, kind) {
        (Family::V4, "N") => "192.168.50.10".to_string(),
        (Family::V6, "N") => "fd00:50::10".to_string(),
        (Family::V4, "A") => format!("10.244.1.{n}"),
        (Family::V6, "A") => format!("fd00:10:244:1::{n}"),
        (Family::V4, "B") => format!("10.244.2.{n}"),
        (Family::V6, "B") => format!("fd00:10:244:2::{n}"),
        (Family::V4, "C") => format!("10.244.3.{n}"),
        (Family::V6, "C") => format!("fd00:10:244:3::{n}"),
        (Family::V4, "S") => format!("10.96.0.{n}"),
        (Family::V6, "S") => format!("fd00:10:96::{n}"),
        (Family::V4, "E") => format!("203.0.113.{n}"),
        (Family::V6, "E") => format!("2001:db8:113::{n}"),
        (Family::V4, "O") => format!("198.51.100.{n}"),
        (Family::V6, "O") => format!("2001:db8:100::{n}"),
        (Family::V4, "X") => format!("192.0.2.{n}"),
        (Family::V6, "X") => format!("2001:db8:2::{n}"),
        _ => panic!("unknown logical address {logical}"),
    };
    s.parse().expect("address")
}

fn cidr(f: Family, what: &str) -> &'static str {
    match (f, what) {
        (Family::V4, "cluster") => "10.244.0.0/16",
        (Family::V6, "cluster") => "fd00:10:244::/56",
        (Family::V4, "pods") => "10.244.1.0/24",
        (Family::V6, "pods") => "fd00:10:244:1::/64",
        (Family::V4, "services") => "10.96.0.0/16",
        (Family::V6, "services") => "fd00:10:96::/112",
        (Family::V4, "sources") => "198.51.100.0/24",
        (Family::V6, "sources") => "2001:db8:100::/64",
        (Family::V4, "nodes") => "192.168.50.0/24",
        (Family::V6, "nodes") => "fd00:50::/64",
        _ => panic!("{what}"),
    }
}

fn fam(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// An endpoint: logical address on `node`.
fn ep(f: Family, logical: &str, node: &str) -> EndpointBuilder {
    fx::ep(&ip(f, logical).to_string()).node(node)
}

/// The fixture cluster of family `f` as manifests: node-a (zone-a), the ServiceCIDR, and
/// each service of [`svc_ip`] with one EndpointSlice (none for `empty`).
fn fixture(f: Family) -> String {
    let s = |name: &str| {
        let cip = svc_ip(f, name).to_string();
        fx::svc("t", name)
            .cluster_ip(&cip)
            .cluster_ips(&[&cip])
            .ip_families(&[fam(f)])
    };
    let http = |name: &str| s(name).port("http", 80, "TCP").target_port_name("http");
    let node_port = |name: &str, type_: &str, np: i32| http(name).type_(type_).node_port(np);
    let e = |logical: &str| ip(f, logical).to_string();
    let zoned =
        |logical: &str, node: &str, zone: &str| ep(f, logical, node).zone(zone).zone_hints(&[zone]);
    let svcs: Vec<(ServiceBuilder, Vec<EndpointBuilder>)> = vec![
        (
            node_port("web", "NodePort", 30080).external_ips(&[e("E1")]),
            vec![
                ep(f, "A1", "node-a"),
                ep(f, "B1", "node-b"),
                ep(f, "B2", "node-b"),
                ep(f, "B3", "node-b").ready(false),
            ],
        ),
        (
            node_port("lb", "LoadBalancer", 30090)
                .source_ranges(&[cidr(f, "sources")])
                .lb_ingress(&e("E2")),
            vec![ep(f, "A2", "node-a"), ep(f, "B4", "node-b")],
        ),
        (
            node_port("etp", "LoadBalancer", 30081)
                .etp_local()
                .health_check_node_port(32000)
                .lb_ingress(&e("E3")),
            vec![ep(f, "A3", "node-a"), ep(f, "B5", "node-b")],
        ),
        (
            node_port("etp-none", "NodePort", 30082).etp_local(),
            vec![ep(f, "B6", "node-b")],
        ),
        (
            http("itp").itp_local(),
            vec![ep(f, "A4", "node-a"), ep(f, "B7", "node-b")],
        ),
        (http("itp-none").itp_local(), vec![ep(f, "B8", "node-b")]),
        (
            http("term"),
            vec![
                ep(f, "B9", "node-b")
                    .ready(false)
                    .serving(true)
                    .terminating(true),
                ep(f, "B10", "node-b")
                    .ready(false)
                    .serving(false)
                    .terminating(true),
            ],
        ),
        (
            node_port("empty", "NodePort", 30083).external_ips(&[e("E4")]),
            vec![],
        ),
        (
            http("sticky").session_affinity("ClientIP"),
            vec![ep(f, "A5", "node-a"), ep(f, "B11", "node-b")],
        ),
        (
            s("dns")
                .port("dns", 53, "UDP")
                .target_port(5353)
                .port("sig", 2905, "SCTP")
                .target_port(2905),
            vec![ep(f, "A6", "node-a"), ep(f, "B12", "node-b")],
        ),
        (
            http("topo"),
            vec![
                zoned("A7", "node-a", "zone-a"),
                zoned("B13", "node-b", "zone-b"),
                zoned("C1", "node-c", "zone-a"),
            ],
        ),
    ];
    let node = fx::node("node-a")
        .zone("zone-a")
        .pod_cidrs(&[cidr(f, "pods")])
        .internal_ip(&e("N0"));
    let mut o = Objects {
        nodes: vec![node.build()],
        service_cidrs: vec![fx::service_cidr("kubernetes", &[cidr(f, "services")]).build()],
        ..Objects::default()
    };
    for (svc, endpoints) in svcs {
        let svc = svc.build();
        let name = svc.metadata.name.clone().unwrap_or_default();
        if !endpoints.is_empty() {
            let mut slice = fx::slice("t", &format!("{name}-1"), &name).address_type(fam(f));
            slice = match name.as_str() {
                "dns" => slice.port("dns", 5353, "UDP").port("sig", 2905, "SCTP"),
                _ => slice.port("http", 8080, "TCP"),
            };
            o.slices.push(slice.endpoints(endpoints).build());
        }
        o.services.push(svc);
    }
    fx::manifests(&o)
}

/// The ClusterIP of the i-th fixture service.
fn svc_ip(f: Family, name: &str) -> IpAddr {
    let names = [
        "web", "lb", "etp", "etp-none", "itp", "itp-none", "term", "empty", "sticky", "dns", "topo",
    ];
    let i = names.iter().position(|n| *n == name).expect("service");
    ip(f, &format!("S{}", 10 + i))
}

struct World {
    f: Family,
    rs: Ruleset,
    host: Host,
}

impl World {
    fn new(f: Family, extra_flags: &[&str]) -> World {
        let mut flags = vec!["--hostname-override=node-a"];
        flags.extend_from_slice(extra_flags);
        let (_model, warnings, rs) = common::pipeline(&fixture(f), &flags);
        assert!(warnings.is_empty(), "{warnings:?}");
        World {
            f,
            rs,
            host: Host {
                local_addrs: vec![ip(f, "N0")],
            },
        }
    }
    fn default(f: Family) -> World {
        let cc = format!("--cluster-cidr={}", cidr(f, "cluster"));
        World::new(f, &[cc.as_str()])
    }
    fn probe(&self, from: &str, to: IpAddr, port: u16, proto: Protocol) -> Trace {
        let (origin, src) = match from {
            "node" => (Origin::Node, ip(self.f, "N0")),
            l if l.starts_with('A') => (
                Origin::Pod {
                    iifname: "cni0".into(),
                },
                ip(self.f, l),
            ),
            l => (
                Origin::External {
                    iifname: "eth0".into(),
                },
                ip(self.f, l),
            ),
        };
        trace(
            &self.rs,
            &self.host,
            &Probe {
                origin,
                src,
                dst: to,
                proto,
                port,
            },
        )
    }
    fn tcp(&self, from: &str, to: IpAddr, port: u16) -> Trace {
        self.probe(from, to, port, Protocol::Tcp)
    }
    fn eps(&self, logical: &[&str], port: u16) -> BTreeSet<EndpointAddr> {
        logical
            .iter()
            .map(|l| EndpointAddr {
                ip: ip(self.f, l),
                port,
            })
            .collect()
    }
}

fn endpoints(t: &Trace) -> BTreeSet<EndpointAddr> {
    t.endpoints.iter().copied().collect()
}

#[track_caller]
fn assert_dnat(t: &Trace, want: &BTreeSet<EndpointAddr>, masquerade: bool) {
    assert_eq!(t.verdict, TraceVerdict::Dnat, "{t:#?}");
    assert_eq!(&endpoints(t), want, "endpoints");
    for p in &t.paths {
        assert_eq!(p.verdict, TraceVerdict::Dnat, "every path DNATs: {p:#?}");
        assert_eq!(
            p.masquerade, masquerade,
            "masquerade on path to {:?}",
            p.endpoint
        );
    }
}

#[track_caller]
fn assert_verdict(t: &Trace, v: TraceVerdict) {
    assert_eq!(t.verdict, v, "{t:#?}");
    assert!(t.endpoints.is_empty() || v == TraceVerdict::Dnat);
    assert!(t.paths.iter().all(|p| p.verdict == v), "{t:#?}");
}

fn both(test: impl Fn(Family)) {
    test(Family::V4);
    test(Family::V6);
}

#[test]
fn clusterip_spreads_over_ready_endpoints_with_named_target_port() {
    both(|f| {
        let w = World::default(f);
        let t = w.tcp("A99", svc_ip(f, "web"), 80);
        // Not-ready B3 is excluded; "http" resolves to the slice's 8080.
        assert_dnat(&t, &w.eps(&["A1", "B1", "B2"], 8080), false);
    });
}

#[test]
fn clusterip_from_node_and_outside_is_masqueraded() {
    both(|f| {
        let w = World::default(f);
        let all = w.eps(&["A1", "B1", "B2"], 8080);
        assert_dnat(&w.tcp("node", svc_ip(f, "web"), 80), &all, true);
        assert_dnat(&w.tcp("O5", svc_ip(f, "web"), 80), &all, true);
    });
}

#[test]
fn hairpin_is_masqueraded_only_on_the_path_back_to_the_client() {
    both(|f| {
        let w = World::default(f);
        let t = w.tcp("A1", svc_ip(f, "web"), 80);
        assert_eq!(endpoints(&t), w.eps(&["A1", "B1", "B2"], 8080));
        for p in &t.paths {
            let back_to_self = p.endpoint.map(|e| e.ip) == Some(ip(f, "A1"));
            assert_eq!(p.masquerade, back_to_self, "{p:#?}");
        }
    });
}

#[test]
fn udp_and_sctp_ports() {
    both(|f| {
        let w = World::default(f);
        let t = w.probe("A99", svc_ip(f, "dns"), 53, Protocol::Udp);
        assert_dnat(&t, &w.eps(&["A6", "B12"], 5353), false);
        let t = w.probe("A99", svc_ip(f, "dns"), 2905, Protocol::Sctp);
        assert_dnat(&t, &w.eps(&["A6", "B12"], 2905), false);
        // TCP on the UDP port of the same ClusterIP is not served: rejected.
        assert_verdict(&w.tcp("A99", svc_ip(f, "dns"), 53), TraceVerdict::Reject);
    });
}

#[test]
fn wrong_port_on_live_clusterip_is_rejected_and_unallocated_address_dropped() {
    both(|f| {
        let w = World::default(f);
        assert_verdict(&w.tcp("A99", svc_ip(f, "web"), 81), TraceVerdict::Reject);
        assert_verdict(&w.tcp("node", svc_ip(f, "web"), 81), TraceVerdict::Reject);
        // Inside the ServiceCIDR, no service holds it.
        assert_verdict(&w.tcp("A99", ip(f, "S250"), 80), TraceVerdict::Drop);
        assert_verdict(&w.tcp("node", ip(f, "S250"), 80), TraceVerdict::Drop);
        // Outside every service range: not kproxy's business.
        assert_verdict(&w.tcp("A99", ip(f, "X9"), 80), TraceVerdict::Accept);
    });
}

#[test]
fn nodeport_and_external_ip_from_outside_are_masqueraded_to_all_endpoints() {
    both(|f| {
        let w = World::default(f);
        let all = w.eps(&["A1", "B1", "B2"], 8080);
        assert_dnat(&w.tcp("O5", ip(f, "N0"), 30080), &all, true);
        assert_dnat(&w.tcp("O5", ip(f, "E1"), 80), &all, true);
        // A pod using the externalIP is external traffic too (eTP Cluster: masqueraded).
        assert_dnat(&w.tcp("A99", ip(f, "E1"), 80), &all, true);
        // An unused NodePort on the node is not touched.
        assert_verdict(&w.tcp("O5", ip(f, "N0"), 30999), TraceVerdict::Accept);
    });
}

#[test]
fn no_endpoints_rejects_every_entry_point() {
    both(|f| {
        let w = World::default(f);
        for t in [
            w.tcp("A99", svc_ip(f, "empty"), 80),
            w.tcp("node", svc_ip(f, "empty"), 80),
            w.tcp("O5", ip(f, "N0"), 30083),
            w.tcp("O5", ip(f, "E4"), 80),
        ] {
            assert_verdict(&t, TraceVerdict::Reject);
        }
    });
}

#[test]
fn load_balancer_source_ranges_apply_to_lb_ips_only() {
    both(|f| {
        let w = World::default(f);
        let all = w.eps(&["A2", "B4"], 8080);
        assert_dnat(&w.tcp("O5", ip(f, "E2"), 80), &all, true);
        assert_verdict(&w.tcp("X5", ip(f, "E2"), 80), TraceVerdict::Drop);
        // The NodePort and ClusterIP of the same service are not firewalled.
        assert_dnat(&w.tcp("X5", ip(f, "N0"), 30090), &all, true);
        assert_dnat(&w.tcp("X5", svc_ip(f, "lb"), 80), &all, true);
    });
}

#[test]
fn source_range_containing_the_node_also_allows_the_lb_ip_as_source() {
    both(|f| {
        // Same fixture, with the node's range allowed: the LB IP itself becomes an allowed
        // source (hairpin through a VIP bound on the node), but other addresses stay out.
        let yaml = fixture(f).replace(cidr(f, "sources"), cidr(f, "nodes"));
        let cc = format!("--cluster-cidr={}", cidr(f, "cluster"));
        let (_, _, rs) = common::pipeline(&yaml, &["--hostname-override=node-a", &cc]);
        let host = Host {
            local_addrs: vec![ip(f, "N0")],
        };
        let probe = |src: IpAddr| {
            trace(
                &rs,
                &host,
                &Probe {
                    origin: Origin::External {
                        iifname: "eth0".into(),
                    },
                    src,
                    dst: ip(f, "E2"),
                    proto: Protocol::Tcp,
                    port: 80,
                },
            )
        };
        assert_eq!(probe(ip(f, "E2")).verdict, TraceVerdict::Dnat);
        assert_eq!(probe(ip(f, "N0")).verdict, TraceVerdict::Dnat);
        assert_eq!(probe(ip(f, "O5")).verdict, TraceVerdict::Drop);
    });
}

#[test]
fn external_traffic_policy_local() {
    both(|f| {
        let w = World::default(f);
        // Outside clients: local endpoints only, source kept.
        let local = w.eps(&["A3"], 8080);
        assert_dnat(&w.tcp("O5", ip(f, "E3"), 80), &local, false);
        assert_dnat(&w.tcp("O5", ip(f, "N0"), 30081), &local, false);
        // Pods short-circuit to all endpoints, unmasqueraded.
        let all = w.eps(&["A3", "B5"], 8080);
        assert_dnat(&w.tcp("A99", ip(f, "E3"), 80), &all, false);
        // The node itself short-circuits too, masqueraded.
        assert_dnat(&w.tcp("node", ip(f, "N0"), 30081), &all, true);
        // ClusterIP traffic is not affected by eTP.
        assert_dnat(&w.tcp("A99", svc_ip(f, "etp"), 80), &all, false);
    });
}

#[test]
fn external_traffic_policy_local_without_local_endpoints_drops_outside_traffic() {
    both(|f| {
        let w = World::default(f);
        assert_verdict(&w.tcp("O5", ip(f, "N0"), 30082), TraceVerdict::Drop);
        let remote = w.eps(&["B6"], 8080);
        assert_dnat(&w.tcp("A99", ip(f, "N0"), 30082), &remote, false);
        assert_dnat(&w.tcp("node", ip(f, "N0"), 30082), &remote, true);
        assert_dnat(&w.tcp("A99", svc_ip(f, "etp-none"), 80), &remote, false);
    });
}

#[test]
fn internal_traffic_policy_local() {
    both(|f| {
        let w = World::default(f);
        assert_dnat(
            &w.tcp("A99", svc_ip(f, "itp"), 80),
            &w.eps(&["A4"], 8080),
            false,
        );
        // No local endpoint while remote ones exist: dropped, not rejected.
        assert_verdict(&w.tcp("A99", svc_ip(f, "itp-none"), 80), TraceVerdict::Drop);
    });
}

#[test]
fn terminating_endpoints_are_the_fallback() {
    both(|f| {
        let w = World::default(f);
        // Only B9 is serving+terminating; B10 is not serving.
        assert_dnat(
            &w.tcp("A99", svc_ip(f, "term"), 80),
            &w.eps(&["B9"], 8080),
            false,
        );
    });
}

#[test]
fn topology_hints_keep_traffic_in_the_zone() {
    both(|f| {
        let w = World::default(f);
        assert_dnat(
            &w.tcp("A99", svc_ip(f, "topo"), 80),
            &w.eps(&["A7", "C1"], 8080),
            false,
        );
    });
}

#[test]
fn session_affinity_new_clients_can_reach_every_endpoint() {
    both(|f| {
        let w = World::default(f);
        assert_dnat(
            &w.tcp("A99", svc_ip(f, "sticky"), 80),
            &w.eps(&["A5", "B11"], 8080),
            false,
        );
        // One shard's three maps, whatever the number of endpoints; the service's timeout
        // (the default, 10800 s) is in its rules.
        let table = w.rs.table(f).unwrap();
        let affinity: Vec<_> = table
            .sets
            .values()
            .filter(|s| s.name.starts_with("affinity-"))
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            affinity,
            ["affinity-0", "affinity-endpoints-0", "affinity-pick-0"]
        );
        let state = &table.sets["affinity-0"];
        assert!(state.flags.dynamic && state.flags.timeout);
        let timeouts: Vec<u32> = table
            .chains
            .values()
            .flat_map(|c| c.rules.iter().flat_map(|r| &r.stmts))
            .filter_map(|s| match s {
                Stmt::DnatAffinity {
                    step: AffinityStep::Known { timeout, .. },
                    ..
                } => Some(*timeout),
                _ => None,
            })
            .collect();
        assert_eq!(timeouts, [10_800], "one affinity list, the default timeout");
    });
}

#[test]
fn masquerade_all_masquerades_pod_traffic_too() {
    both(|f| {
        let cc = format!("--cluster-cidr={}", cidr(f, "cluster"));
        let w = World::new(f, &[cc.as_str(), "--masquerade-all"]);
        let all = w.eps(&["A1", "B1", "B2"], 8080);
        assert_dnat(&w.tcp("A99", svc_ip(f, "web"), 80), &all, true);
    });
}

#[test]
fn without_a_detector_clusterip_is_never_masqueraded_and_pods_lose_the_short_circuit() {
    both(|f| {
        let w = World::new(f, &[]);
        let all = w.eps(&["A1", "B1", "B2"], 8080);
        assert_dnat(&w.tcp("O5", svc_ip(f, "web"), 80), &all, false);
        // eTP Local: a pod is treated like any outside client (local endpoints only).
        assert_dnat(&w.tcp("A99", ip(f, "E3"), 80), &w.eps(&["A3"], 8080), false);
    });
}

#[test]
fn interface_detectors_classify_by_arrival_interface() {
    both(|f| {
        for flags in [
            vec![
                "--detect-local-mode=BridgeInterface",
                "--pod-bridge-interface=cni0",
            ],
            vec![
                "--detect-local-mode=InterfaceNamePrefix",
                "--pod-interface-name-prefix=cni",
            ],
        ] {
            let w = World::new(f, &flags);
            let all = w.eps(&["A1", "B1", "B2"], 8080);
            // Arriving on cni0: a pod, not masqueraded. On eth0: masqueraded.
            assert_dnat(&w.tcp("A99", svc_ip(f, "web"), 80), &all, false);
            assert_dnat(&w.tcp("O5", svc_ip(f, "web"), 80), &all, true);
        }
    });
}

#[test]
fn node_cidr_detector_uses_the_node_pod_cidr() {
    both(|f| {
        let w = World::new(f, &["--detect-local-mode=NodeCIDR"]);
        let all = w.eps(&["A1", "B1", "B2"], 8080);
        assert_dnat(&w.tcp("A99", svc_ip(f, "web"), 80), &all, false);
        // A pod of another node (B range) is not local to this node's detector.
        assert_dnat(&w.tcp("B99", svc_ip(f, "web"), 80), &all, true);
    });
}

#[test]
fn nodeport_addresses_select_the_destination_addresses() {
    both(|f| {
        let cc = format!("--cluster-cidr={}", cidr(f, "cluster"));
        // A CIDR list that does not contain the node IP: NodePorts are not served.
        let other = match f {
            Family::V4 => "--nodeport-addresses=172.31.0.0/16",
            Family::V6 => "--nodeport-addresses=fd99::/64",
        };
        let w = World::new(f, &[cc.as_str(), other]);
        assert_verdict(&w.tcp("O5", ip(f, "N0"), 30080), TraceVerdict::Accept);
        // One that contains it: served.
        let mine = format!("--nodeport-addresses={}", cidr(f, "nodes"));
        let w = World::new(f, &[cc.as_str(), mine.as_str()]);
        let all = w.eps(&["A1", "B1", "B2"], 8080);
        assert_dnat(&w.tcp("O5", ip(f, "N0"), 30080), &all, true);
        // Everything (0.0.0.0/0, ::/0): any local address, via fib.
        let any = match f {
            Family::V4 => "--nodeport-addresses=0.0.0.0/0",
            Family::V6 => "--nodeport-addresses=::/0",
        };
        let mut w = World::new(f, &[cc.as_str(), any]);
        w.host.local_addrs.push(ip(f, "E9"));
        assert_dnat(&w.tcp("O5", ip(f, "E9"), 30080), &all, true);
        assert_verdict(&w.tcp("O5", ip(f, "E8"), 30080), TraceVerdict::Accept);
    });
}

#[test]
fn families_are_independent() {
    // An IPv4 probe never sees the IPv6 table and vice versa.
    let w = World::default(Family::V4);
    let t6 = trace(
        &w.rs,
        &w.host,
        &Probe {
            origin: Origin::Node,
            src: ip(Family::V6, "N0"),
            dst: ip(Family::V6, "S10"),
            proto: Protocol::Tcp,
            port: 80,
        },
    );
    assert_eq!(t6.verdict, TraceVerdict::Accept);
}
