//! Tier 3: packet tests. kproxy's rules are loaded into the node namespace of a throwaway
//! topology (`common::topology`: a node, pods on it and on node-b, an outside network) and
//! real TCP, UDP and SCTP connections prove where traffic goes: DNAT targets, spread,
//! affinity, masquerade (the source the backend saw), reject (refused at once) and drop
//! (timeout), for IPv4 and IPv6 with the same test body.
//!
//! Every probe is also traced on the same ruleset (`kproxy::trace`), and the kernel's
//! outcome must be one the tracer predicted: the endpoint reached is among the trace's
//! endpoints and masquerade matches that path, refused ↔ reject, timeout ↔ drop. A
//! disagreement is a bug in the rules or in the tracer.
//!
//! The manifests are generated here for both families at once (dual-stack services) from
//! the topology's addresses; see [`services`]. Needs root; elsewhere (CI unset) each test
//! prints one line and skips.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::kernel_tests_enabled;
use common::topology::{
    cidr, gateway_ip, node_ip, node_link_b_ip, outside_ip, pod_ip, Client, Outcome, Topology,
    DEFAULT_TIMEOUT, SCTP_PORT,
};
use kproxy::model::EndpointAddr;
use kproxy::nft::{Family, Protocol};
use kproxy::testutil::fixtures::{self as fx, EndpointBuilder, ServiceBuilder, SliceBuilder};
use kproxy::trace::{Probe, Trace, TraceVerdict};

use Protocol::{Sctp, Tcp, Udp};

/// How long a probe the tracer says is dropped waits before it counts as a timeout.
const DROP_TIMEOUT: Duration = Duration::from_millis(1000);
/// A refusal must come at once: from the ICMP error answering the SYN (or its first
/// retransmission, 1 s later), well before the 3 s a timeout would take. Linux ignores an
/// ICMP error that arrives while `connect()` still holds the socket (nstat
/// `TcpExtLockDroppedIcmps`); over veth pairs the whole path runs in the sender's own
/// softirq, so the error for an IPv6 pod's first SYN is dropped that way and the
/// retransmitted SYN's error is the one that refuses.
const REFUSED_WITHIN: Duration = Duration::from_millis(1500);

const LOCAL_PODS: usize = 4;
const REMOTE_PODS: usize = 3;
/// The pod used as a client: on this node, an endpoint of no service.
const CLIENT: Client = Client::Pod("A4");

// ---------------------------------------------------------------------------------------
// Manifests.

fn fam(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

/// Service addresses: `S<n>` in the ServiceCIDR, `E<n>` external/LoadBalancer addresses.
fn ip(f: Family, logical: &str) -> IpAddr {
    let (kind, n) = logical.split_at(1);
    let n: u8 = n.parse().expect("number");
    let s = match (f, kind) {
        (Family::V4, "S") => format!("10.96.0.{n}"),
        (Family::V6, "S") => format!("fd00:10:96::{n}"),
        (Family::V4, "E") => format!("203.0.113.{n}"),
        (Family::V6, "E") => format!("2001:db8:113::{n}"),
        _ => panic!("unknown logical address {logical}"),
    };
    s.parse().expect("address")
}

/// Changes to a builder: the parts of a fixture that differ between services.
type Edit<B> = fn(B) -> B;

#[derive(Clone)]
struct Svc {
    name: &'static str,
    /// Everything beyond the dual-stack ClusterIPs: type, ports, policies, externalIPs.
    spec: Edit<ServiceBuilder>,
    /// LoadBalancer ingress address (`E<n>`), if any.
    lb: Option<&'static str>,
    slice_ports: Edit<SliceBuilder>,
    /// (pod, endpoint conditions).
    endpoints: Vec<(&'static str, Edit<EndpointBuilder>)>,
}

/// Both families' addresses of logical address `l`.
fn both_ips(l: &str) -> [String; 2] {
    [ip(Family::V4, l).to_string(), ip(Family::V6, l).to_string()]
}

/// Port http: 80 → container port `http`, and a NodePort when `node_port` is not 0.
fn http(s: ServiceBuilder, node_port: i32) -> ServiceBuilder {
    let s = s.port("http", 80, "TCP").target_port_name("http");
    match node_port {
        0 => s,
        np => s.node_port(np),
    }
}

fn http_slice(s: SliceBuilder) -> SliceBuilder {
    s.port("http", 8080, "TCP")
}

fn ready(e: EndpointBuilder) -> EndpointBuilder {
    e
}

fn not_ready(e: EndpointBuilder) -> EndpointBuilder {
    e.ready(false)
}

/// The cluster every test programs (some change it). Pods are shared between services.
fn services() -> Vec<Svc> {
    let s = |name, spec, lb, slice_ports, endpoints| Svc {
        name,
        spec,
        lb,
        slice_ports,
        endpoints,
    };
    let plain = |name, endpoints| s(name, |b| http(b, 0), None, http_slice, endpoints);
    vec![
        s(
            "web",
            |b| http(b.type_("NodePort").external_ips(&both_ips("E1")), 30080),
            None,
            http_slice,
            vec![
                ("A1", ready),
                ("B1", ready),
                ("B2", ready),
                ("B3", not_ready),
            ],
        ),
        s(
            "named",
            |b| {
                b.port("http", 80, "TCP")
                    .target_port_name("web")
                    .port("alt", 81, "TCP")
                    .target_port_name("alt")
            },
            None,
            |b| b.port("http", 8080, "TCP").port("alt", 8081, "TCP"),
            vec![("A2", ready), ("B2", ready)],
        ),
        s(
            "lb",
            |b| {
                let sources = [cidr(Family::V4, "sources"), cidr(Family::V6, "sources")];
                http(b.type_("LoadBalancer").source_ranges(&sources), 30090)
            },
            Some("E2"),
            http_slice,
            vec![("A2", ready), ("B1", ready)],
        ),
        s(
            "lb-open",
            |b| http(b.type_("LoadBalancer"), 30091),
            Some("E5"),
            http_slice,
            vec![("A1", ready), ("B2", ready)],
        ),
        s(
            "etp",
            |b| {
                let b = b.type_("LoadBalancer").etp_local();
                http(b.health_check_node_port(32000), 30081)
            },
            Some("E3"),
            http_slice,
            vec![("A3", ready), ("B2", ready)],
        ),
        s(
            "etp-none",
            |b| http(b.type_("NodePort").etp_local(), 30082),
            None,
            http_slice,
            vec![("B3", ready)],
        ),
        s(
            "etp-remote",
            |b| {
                let b = b.type_("LoadBalancer").etp_local();
                let b = b.external_ips(&both_ips("E6"));
                http(b.health_check_node_port(32001), 30085)
            },
            Some("E7"),
            http_slice,
            vec![("B1", ready), ("B3", ready)],
        ),
        s(
            "itp",
            |b| http(b.itp_local(), 0),
            None,
            http_slice,
            vec![("A1", ready), ("B1", ready)],
        ),
        s(
            "itp-none",
            |b| http(b.itp_local(), 0),
            None,
            http_slice,
            vec![("B2", ready)],
        ),
        plain(
            "term",
            vec![
                ("B1", |e| e.ready(false).serving(true).terminating(true)),
                ("B2", |e| e.ready(false).serving(false).terminating(true)),
            ],
        ),
        s(
            "empty",
            |b| {
                let b = http(b.type_("NodePort").external_ips(&both_ips("E4")), 30083);
                b.port("dns", 53, "UDP").target_port(5353).node_port(30084)
            },
            None,
            http_slice,
            vec![],
        ),
        s(
            "sticky",
            |b| http(b.affinity(Some(2)), 0),
            None,
            http_slice,
            vec![("A1", ready), ("A2", ready), ("B1", ready), ("B2", ready)],
        ),
        s(
            "dns",
            |b| {
                b.type_("NodePort")
                    .port("dns", 53, "UDP")
                    .target_port(5353)
                    .node_port(30053)
                    .port("sig", 2905, "SCTP")
                    .target_port(2905)
                    .node_port(30905)
            },
            None,
            |b| b.port("dns", 5353, "UDP").port("sig", 2905, "SCTP"),
            vec![("A2", ready), ("B2", ready)],
        ),
        plain("self", vec![("A1", ready)]),
        plain("gone", vec![("A2", ready)]),
        plain(
            "even",
            vec![
                ("A1", ready),
                ("A2", ready),
                ("A3", ready),
                ("B1", ready),
                ("B2", ready),
                ("B3", ready),
            ],
        ),
        s(
            "sticky-long",
            |b| http(b.affinity(Some(600)), 0),
            None,
            http_slice,
            vec![("A1", ready), ("A2", ready), ("B1", ready), ("B2", ready)],
        ),
        s(
            "sticky-local",
            |b| http(b.type_("NodePort").etp_local().affinity(Some(600)), 30092),
            None,
            http_slice,
            vec![("A1", ready), ("A2", ready), ("B1", ready)],
        ),
    ]
}

/// The ClusterIP of a service of [`services`] (stable: by position in that list).
fn svc_ip(f: Family, name: &str) -> IpAddr {
    let i = services()
        .iter()
        .position(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name}"));
    ip(f, &format!("S{}", 10 + i))
}

/// Dual-stack manifests: the node, the ServiceCIDRs, each service (ClusterIPs of both
/// families) and one EndpointSlice per family.
fn manifests(svcs: &[Svc]) -> String {
    let all = services();
    let (v4, v6) = (Family::V4, Family::V6);
    let mut o = common::node_objects();
    for s in svcs {
        assert!(
            all.iter().any(|a| a.name == s.name),
            "{} not in services()",
            s.name
        );
        let (cip4, cip6) = (
            svc_ip(v4, s.name).to_string(),
            svc_ip(v6, s.name).to_string(),
        );
        let mut svc = fx::svc("t", s.name).dual_stack(&cip4, &cip6);
        if let Some(lb) = s.lb {
            let [lb4, lb6] = both_ips(lb);
            svc = svc.lb_ingress(&lb4).lb_ingress(&lb6);
        }
        o.services.push((s.spec)(svc).build());
        if s.endpoints.is_empty() {
            continue;
        }
        for f in [v4, v6] {
            let eps = s.endpoints.iter().map(|(pod, conditions)| {
                let node = if pod.starts_with('A') {
                    "node-a"
                } else {
                    "node-b"
                };
                conditions(fx::ep(&pod_ip(f, pod).to_string()).node(node))
            });
            let name = format!("{}-{}", s.name, fam(f).to_lowercase());
            let slice = fx::slice("t", &name, s.name).address_type(fam(f));
            o.slices.push((s.slice_ports)(slice).endpoints(eps).build());
        }
    }
    fx::manifests(&o)
}

fn flags(extra: &[&str]) -> Vec<String> {
    let mut v = vec![
        "--hostname-override=node-a".to_string(),
        format!(
            "--cluster-cidr={},{}",
            cidr(Family::V4, "cluster"),
            cidr(Family::V6, "cluster")
        ),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

// ---------------------------------------------------------------------------------------
// Harness.

/// A topology programmed with `svcs`, or `None` (after one printed line) without root.
fn lab(test: &str, sctp: bool, svcs: &[Svc], extra_flags: &[&str]) -> Option<Topology> {
    if !kernel_tests_enabled(test) {
        return None;
    }
    let t = Topology::new(LOCAL_PODS, REMOTE_PODS, sctp);
    program(&t, svcs, extra_flags);
    Some(t)
}

fn program(t: &Topology, svcs: &[Svc], extra_flags: &[&str]) {
    let flags = flags(extra_flags);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    t.program(&manifests(svcs), &refs);
}

/// In the lab of `test` programmed with [`services`], runs the body for both families
/// (nothing when kernel tests are off).
fn in_lab(test: &str, sctp: bool, body: impl Fn(&Topology, Family) + Sync) {
    if let Some(t) = lab(test, sctp, &services(), &[]) {
        both(|f| body(&t, f));
    }
}

/// Runs the body for IPv4 and IPv6 at the same time (the families are independent).
fn both(body: impl Fn(Family) + Sync) {
    thread::scope(|s| {
        let b = &body;
        s.spawn(move || b(Family::V4));
        s.spawn(move || b(Family::V6));
    });
}

/// `n` connections through the kernel, each checked against the tracer's prediction for
/// the same ruleset.
fn probes(
    t: &Topology,
    from: Client,
    to: IpAddr,
    port: u16,
    proto: Protocol,
    n: usize,
) -> Vec<Outcome> {
    let probe = t.probe(from, to, port, proto);
    let tr = t.trace(&probe);
    let timeout = if tr.verdict == TraceVerdict::Drop {
        DROP_TIMEOUT
    } else {
        DEFAULT_TIMEOUT
    };
    let start = Instant::now();
    let outs = t.connect_many(from, to, port, proto, timeout, n);
    let per_attempt = start.elapsed() / n as u32;
    for o in &outs {
        agree(t, &probe, &tr, o, per_attempt);
    }
    outs
}

/// The kernel's outcome `o` of `probe` (which took `elapsed`) is one the tracer predicted.
fn agree(t: &Topology, probe: &Probe, tr: &Trace, o: &Outcome, elapsed: Duration) {
    let ctx = |why: &str| {
        format!(
            "kernel and tracer disagree ({why}): {} → {} {}:{}: kernel: {o:?}\n\
             tracer:\n{}",
            probe.src,
            probe.proto.name(),
            probe.dst,
            probe.port,
            tr.render_text(probe)
        )
    };
    match o {
        Outcome::Reached {
            server,
            port,
            saw_source,
        } => {
            assert_eq!(tr.verdict, TraceVerdict::Dnat, "{}", ctx("verdict"));
            let ep = EndpointAddr {
                ip: *server,
                port: *port,
            };
            let masq: BTreeSet<bool> = tr
                .paths
                .iter()
                .filter(|p| p.verdict == TraceVerdict::Dnat && p.endpoint == Some(ep))
                .map(|p| p.masquerade)
                .collect();
            assert!(!masq.is_empty(), "{}", ctx("endpoint not predicted"));
            let kernel_masq = *saw_source != probe.src;
            assert!(masq.contains(&kernel_masq), "{}", ctx("masquerade"));
            if kernel_masq {
                assert_eq!(
                    *saw_source,
                    t.egress_addr(*server),
                    "{}",
                    ctx("masqueraded to the wrong address")
                );
            }
        }
        Outcome::Refused => {
            // Not DNATed to a node address: nothing listens there, so it is refused too.
            let accepted_locally = tr.verdict == TraceVerdict::Accept && t.is_node_addr(probe.dst);
            assert!(
                tr.verdict == TraceVerdict::Reject || accepted_locally,
                "{}",
                ctx("refused")
            );
            assert!(
                elapsed < REFUSED_WITHIN,
                "{}",
                ctx(&format!("refused only after {elapsed:?}"))
            );
        }
        Outcome::Timeout => {
            assert_eq!(tr.verdict, TraceVerdict::Drop, "{}", ctx("timeout"));
        }
        Outcome::Unreachable | Outcome::Broken => panic!("{}", ctx("unexpected")),
    }
}

fn probe(t: &Topology, from: Client, to: IpAddr, port: u16, proto: Protocol) -> Outcome {
    probes(t, from, to, port, proto, 1)
        .pop()
        .expect("one outcome")
}

/// Who the backend saw as the source.
#[derive(Clone, Copy, Debug)]
enum Seen {
    /// The client's own address (not masqueraded).
    Client,
    /// The node's address on the link to the endpoint (masqueraded).
    Masqueraded,
}

#[track_caller]
fn check_source(t: &Topology, from: Client, o: &Outcome, seen: Seen) {
    let Outcome::Reached {
        server, saw_source, ..
    } = o
    else {
        panic!("{from:?}: expected a server, got {o:?}");
    };
    let want = match seen {
        Seen::Client => t.source_of(from, *server),
        Seen::Masqueraded => t.egress_addr(*server),
    };
    assert_eq!(
        *saw_source, want,
        "{from:?} → {server}: source seen ({seen:?})"
    );
}

/// Connects until every pod in `want` answered on `port` (each answer must come from one
/// of them, with the source `seen`); at most 10 rounds of 12 connections.
#[track_caller]
#[allow(clippy::too_many_arguments)]
fn spread(
    t: &Topology,
    from: Client,
    to: IpAddr,
    port: u16,
    proto: Protocol,
    want: &[&str],
    want_port: u16,
    seen: Seen,
) {
    let f = Family::of(&to);
    let want: BTreeSet<IpAddr> = want.iter().map(|p| pod_ip(f, p)).collect();
    let mut got = BTreeSet::new();
    for _ in 0..10 {
        for o in probes(t, from, to, port, proto, 12) {
            let Outcome::Reached {
                server, port: p, ..
            } = o
            else {
                panic!("{from:?} → {to}:{port}: {o:?}, expected one of {want:?}");
            };
            assert!(
                want.contains(&server) && p == want_port,
                "{from:?} → {to}:{port}: reached {server}:{p}, expected one of {want:?} on {want_port}"
            );
            check_source(t, from, &o, seen);
            got.insert(server);
        }
        if got == want {
            return;
        }
    }
    panic!("{from:?} → {to}:{port}: only {got:?} of {want:?} answered in 120 connections");
}

/// `n` connections, all answered by `pod` on `want_port`.
#[track_caller]
#[allow(clippy::too_many_arguments)]
fn only(
    t: &Topology,
    from: Client,
    to: IpAddr,
    port: u16,
    proto: Protocol,
    pod: &str,
    want_port: u16,
    seen: Seen,
) {
    let want = pod_ip(Family::of(&to), pod);
    for o in probes(t, from, to, port, proto, 8) {
        assert_eq!(
            o.server(),
            Some(want),
            "{from:?} → {to}:{port}: {o:?}, expected only {pod}"
        );
        assert!(matches!(o, Outcome::Reached { port: p, .. } if p == want_port));
        check_source(t, from, &o, seen);
    }
}

#[track_caller]
fn refused(t: &Topology, from: Client, to: IpAddr, port: u16, proto: Protocol) {
    let o = probe(t, from, to, port, proto);
    assert_eq!(
        o,
        Outcome::Refused,
        "{from:?} → {} {to}:{port}",
        proto.name()
    );
}

#[track_caller]
fn dropped(t: &Topology, from: Client, to: IpAddr, port: u16, proto: Protocol) {
    let o = probe(t, from, to, port, proto);
    assert_eq!(
        o,
        Outcome::Timeout,
        "{from:?} → {} {to}:{port}",
        proto.name()
    );
}

fn o5(f: Family) -> Client {
    Client::Outside(outside_ip(f, "O5"))
}

fn x5(f: Family) -> Client {
    Client::Outside(outside_ip(f, "X5"))
}

// ---------------------------------------------------------------------------------------
// Tests.

#[test]
fn clusterip_spreads_over_ready_endpoints_with_named_target_ports() {
    in_lab("clusterip_spreads", false, |t, f| {
        // Not-ready B3 never answers; the named target port "http" is the slice's 8080.
        let web = svc_ip(f, "web");
        spread(
            t,
            CLIENT,
            web,
            80,
            Tcp,
            &["A1", "B1", "B2"],
            8080,
            Seen::Client,
        );
        // Two named ports of one service resolve to their own slice ports.
        let named = svc_ip(f, "named");
        spread(t, CLIENT, named, 80, Tcp, &["A2", "B2"], 8080, Seen::Client);
        spread(t, CLIENT, named, 81, Tcp, &["A2", "B2"], 8081, Seen::Client);
    });
}

#[test]
fn masquerade_exactly_where_upstream_masquerades() {
    in_lab("masquerade", false, |t, f| {
        let web = svc_ip(f, "web");
        let all = ["A1", "B1", "B2"];
        // Pod → ClusterIP keeps the pod's address.
        spread(t, CLIENT, web, 80, Tcp, &all, 8080, Seen::Client);
        // The node itself and outside clients are masqueraded to the node's address on the
        // link towards the endpoint (the bridge for A*, the node-b link for B*).
        spread(t, Client::Node, web, 80, Tcp, &all, 8080, Seen::Masqueraded);
        spread(t, o5(f), web, 80, Tcp, &all, 8080, Seen::Masqueraded);
        spread(
            t,
            o5(f),
            node_ip(f),
            30080,
            Tcp,
            &all,
            8080,
            Seen::Masqueraded,
        );
        // Hairpin: a pod reaching itself through a service sees the node's bridge address,
        // another pod reaching the same endpoint keeps its own.
        let own = svc_ip(f, "self");
        let o = probe(t, Client::Pod("A1"), own, 80, Tcp);
        assert_eq!(
            o,
            Outcome::Reached {
                server: pod_ip(f, "A1"),
                port: 8080,
                saw_source: gateway_ip(f)
            }
        );
        only(t, CLIENT, own, 80, Tcp, "A1", 8080, Seen::Client);
    });
}

#[test]
fn nodeports_external_ips_and_nodeport_addresses() {
    let Some(t) = lab("nodeports", false, &services(), &[]) else {
        return;
    };
    let all = ["A1", "B1", "B2"];
    both(|f| {
        // Default nodePortAddresses: the primary node IP only.
        spread(
            &t,
            o5(f),
            node_ip(f),
            30080,
            Tcp,
            &all,
            8080,
            Seen::Masqueraded,
        );
        refused(&t, o5(f), node_link_b_ip(f), 30080, Tcp);
        // externalIPs, from outside and from a pod (external traffic either way).
        spread(
            &t,
            o5(f),
            ip(f, "E1"),
            80,
            Tcp,
            &all,
            8080,
            Seen::Masqueraded,
        );
        spread(
            &t,
            CLIENT,
            ip(f, "E1"),
            80,
            Tcp,
            &all,
            8080,
            Seen::Masqueraded,
        );
        // The node reaching its own NodePort.
        spread(
            &t,
            Client::Node,
            node_ip(f),
            30080,
            Tcp,
            &all,
            8080,
            Seen::Masqueraded,
        );
    });
    // nodePortAddresses as CIDRs: only the node's address on the node-b link serves them.
    let cidrs = format!(
        "--nodeport-addresses={},{}",
        cidr(Family::V4, "nodes-b"),
        cidr(Family::V6, "nodes-b")
    );
    program(&t, &services(), &[cidrs.as_str()]);
    both(|f| {
        spread(
            &t,
            o5(f),
            node_link_b_ip(f),
            30080,
            Tcp,
            &all,
            8080,
            Seen::Masqueraded,
        );
        refused(&t, o5(f), node_ip(f), 30080, Tcp);
    });
}

#[test]
fn load_balancer_ips_with_and_without_source_ranges() {
    in_lab("loadbalancer", false, |t, f| {
        let lb = ip(f, "E2");
        // Inside loadBalancerSourceRanges: reached (masqueraded, eTP Cluster).
        spread(
            t,
            o5(f),
            lb,
            80,
            Tcp,
            &["A2", "B1"],
            8080,
            Seen::Masqueraded,
        );
        // Outside them: dropped.
        dropped(t, x5(f), lb, 80, Tcp);
        // The same service's NodePort and ClusterIP are not firewalled.
        spread(
            t,
            x5(f),
            node_ip(f),
            30090,
            Tcp,
            &["A2", "B1"],
            8080,
            Seen::Masqueraded,
        );
        spread(
            t,
            x5(f),
            svc_ip(f, "lb"),
            80,
            Tcp,
            &["A2", "B1"],
            8080,
            Seen::Masqueraded,
        );
        // A LoadBalancer without source ranges takes everyone.
        let open = ip(f, "E5");
        spread(
            t,
            x5(f),
            open,
            80,
            Tcp,
            &["A1", "B2"],
            8080,
            Seen::Masqueraded,
        );
        spread(
            t,
            o5(f),
            open,
            80,
            Tcp,
            &["A1", "B2"],
            8080,
            Seen::Masqueraded,
        );
    });
}

#[test]
fn external_traffic_policy_local() {
    in_lab("etp_local", false, |t, f| {
        // Outside clients: the local endpoint only, and it sees the real client address.
        only(t, o5(f), ip(f, "E3"), 80, Tcp, "A3", 8080, Seen::Client);
        only(t, o5(f), node_ip(f), 30081, Tcp, "A3", 8080, Seen::Client);
        // No local endpoint: outside traffic is dropped.
        dropped(t, o5(f), node_ip(f), 30082, Tcp);
        // Pods short-circuit to every endpoint, unmasqueraded …
        let all = ["A3", "B2"];
        spread(t, CLIENT, ip(f, "E3"), 80, Tcp, &all, 8080, Seen::Client);
        spread(t, CLIENT, node_ip(f), 30081, Tcp, &all, 8080, Seen::Client);
        only(t, CLIENT, node_ip(f), 30082, Tcp, "B3", 8080, Seen::Client);
        // … the node itself too, masqueraded.
        spread(
            t,
            Client::Node,
            node_ip(f),
            30081,
            Tcp,
            &all,
            8080,
            Seen::Masqueraded,
        );
        only(
            t,
            Client::Node,
            node_ip(f),
            30082,
            Tcp,
            "B3",
            8080,
            Seen::Masqueraded,
        );
        // … and to the externalIP and LB IP: every endpoint, masqueraded, the local one too
        // (upstream's external chain), and so when none is local (the endpoint check runs
        // after DNAT in output, so it never sees the address the node dialled).
        spread(
            t,
            Client::Node,
            ip(f, "E3"),
            80,
            Tcp,
            &all,
            8080,
            Seen::Masqueraded,
        );
        let remote = ["B1", "B3"];
        for vip in [ip(f, "E6"), ip(f, "E7")] {
            spread(
                t,
                Client::Node,
                vip,
                80,
                Tcp,
                &remote,
                8080,
                Seen::Masqueraded,
            );
        }
        // From outside, the same addresses have no local endpoint: dropped.
        dropped(t, o5(f), ip(f, "E7"), 80, Tcp);
        // The ClusterIP is not affected by eTP.
        spread(
            t,
            CLIENT,
            svc_ip(f, "etp"),
            80,
            Tcp,
            &all,
            8080,
            Seen::Client,
        );
    });
}

#[test]
fn internal_traffic_policy_local_and_terminating_fallback() {
    in_lab("itp_local", false, |t, f| {
        only(
            t,
            CLIENT,
            svc_ip(f, "itp"),
            80,
            Tcp,
            "A1",
            8080,
            Seen::Client,
        );
        // No local endpoint while remote ones exist: dropped, not rejected.
        dropped(t, CLIENT, svc_ip(f, "itp-none"), 80, Tcp);
        // Whatever the node gets, the tracer must agree.
        probes(t, Client::Node, svc_ip(f, "itp"), 80, Tcp, 4);
        // No ready endpoint: the serving+terminating one takes the traffic, the
        // non-serving one never does.
        only(
            t,
            CLIENT,
            svc_ip(f, "term"),
            80,
            Tcp,
            "B1",
            8080,
            Seen::Client,
        );
    });
}

#[test]
fn rejects_are_immediate_and_drops_time_out() {
    in_lab("reject_drop", false, |t, f| {
        // No endpoints: every entry point is refused at once (ICMP port unreachable).
        let empty = svc_ip(f, "empty");
        refused(t, CLIENT, empty, 80, Tcp);
        refused(t, Client::Node, empty, 80, Tcp);
        refused(t, o5(f), node_ip(f), 30083, Tcp);
        refused(t, o5(f), ip(f, "E4"), 80, Tcp);
        refused(t, CLIENT, empty, 53, Udp);
        refused(t, o5(f), node_ip(f), 30084, Udp);
        // A live ClusterIP on a port it does not serve: refused.
        refused(t, CLIENT, svc_ip(f, "web"), 81, Tcp);
        refused(t, Client::Node, svc_ip(f, "web"), 81, Tcp);
        // TCP on the UDP port of a ClusterIP is not served either.
        refused(t, CLIENT, svc_ip(f, "dns"), 53, Tcp);
        // An unallocated address inside the ServiceCIDR: dropped.
        let unallocated = ip(f, "S250");
        dropped(t, CLIENT, unallocated, 80, Tcp);
        dropped(t, Client::Node, unallocated, 80, Tcp);
    });
}

#[test]
fn session_affinity_sticks_until_the_timeout() {
    in_lab("affinity", false, |t, f| {
        let sticky = svc_ip(f, "sticky");
        let all: BTreeSet<IpAddr> = ["A1", "A2", "B1", "B2"]
            .iter()
            .map(|p| pod_ip(f, p))
            .collect();
        // One client: every connection to the same endpoint (each one refreshes the
        // 2-second timeout).
        let outs = probes(t, CLIENT, sticky, 80, Tcp, 24);
        let first = outs[0].server().expect("reached");
        assert!(all.contains(&first));
        for o in &outs {
            assert_eq!(o.server(), Some(first), "affinity broken: {outs:?}");
            check_source(t, CLIENT, o, Seen::Client);
        }
        // Another client has its own affinity (it may or may not be the same endpoint).
        let other = probes(t, Client::Pod("A3"), sticky, 80, Tcp, 8);
        assert!(other.iter().all(|o| o.server() == other[0].server()));
        // After the timeout the client is new again: some later pick differs (each pick
        // repeats the old endpoint with probability 1/4).
        let mut last = first;
        for round in 0..8 {
            thread::sleep(Duration::from_millis(2300));
            let o = probe(t, CLIENT, sticky, 80, Tcp);
            let now = o.server().expect("reached");
            if now != last {
                return;
            }
            last = now;
            assert!(round < 7, "{f}: the same endpoint after 8 expiries");
        }
    });
}

/// The one endpoint all of `n` probes from `from` reach (affinity), as a pod name.
fn sticks(t: &Topology, f: Family, from: Client, to: IpAddr, port: u16, n: usize) -> &'static str {
    let outs = probes(t, from, to, port, Tcp, n);
    let first = outs[0].server().expect("reached");
    assert!(
        outs.iter().all(|o| o.server() == Some(first)),
        "{f} {from:?}: affinity broken: {outs:?}"
    );
    ["A1", "A2", "A3", "B1", "B2", "B3"]
        .into_iter()
        .find(|p| pod_ip(f, p) == first)
        .unwrap_or_else(|| panic!("{first} is no pod"))
}

#[test]
fn session_affinity_across_endpoint_changes() {
    use std::sync::Mutex;
    let svcs = services();
    let Some(t) = lab("affinity_changes", false, &svcs, &[]) else {
        return;
    };
    let other = Client::Pod("A3");
    // Before: each client sticks to one endpoint; outside clients of the eTP Local
    // NodePort stick to a local one (the Local list has an affinity of its own).
    let before: Mutex<Vec<(Family, &str, &str)>> = Mutex::new(Vec::new());
    both(|f| {
        let long = svc_ip(f, "sticky-long");
        let (a, b) = (
            sticks(&t, f, CLIENT, long, 80, 12),
            sticks(&t, f, other, long, 80, 6),
        );
        let local = sticks(&t, f, o5(f), node_ip(f), 30092, 8);
        assert!(
            ["A1", "A2"].contains(&local),
            "{f}: not a local endpoint: {local}"
        );
        assert!(["A1", "A2", "B1"].contains(&sticks(
            &t,
            f,
            CLIENT,
            svc_ip(f, "sticky-local"),
            80,
            4
        )));
        before.lock().unwrap().push((f, a, b));
    });
    let before = before.into_inner().unwrap();
    // Remove the first client's endpoint (per family: the families' picks differ, so
    // the removed pods are those of both families' first clients).
    let removed: BTreeSet<&str> = before.iter().map(|(_, a, _)| *a).collect();
    let mut next = svcs.clone();
    let long = next
        .iter_mut()
        .find(|s| s.name == "sticky-long")
        .expect("sticky-long");
    long.endpoints.retain(|(p, _)| !removed.contains(p));
    program(&t, &next, &[]);
    both(|f| {
        let long = svc_ip(f, "sticky-long");
        let &(_, _, b) = before.iter().find(|(g, _, _)| *g == f).expect("family");
        // The first client moves to a live endpoint and sticks there, never to a removed one.
        let a2 = sticks(&t, f, CLIENT, long, 80, 12);
        assert!(
            !removed.contains(a2),
            "{f}: back to a removed endpoint {a2}"
        );
        // The other client keeps its endpoint unless it was removed too.
        let b2 = sticks(&t, f, other, long, 80, 6);
        if removed.contains(b) {
            assert!(
                !removed.contains(b2),
                "{f}: back to a removed endpoint {b2}"
            );
        } else {
            assert_eq!(b2, b, "{f}: a client of a live endpoint lost its affinity");
        }
    });
}

#[test]
fn udp_and_sctp_services() {
    in_lab("udp_sctp", true, |t, f| {
        let dns = svc_ip(f, "dns");
        let all = ["A2", "B2"];
        spread(t, CLIENT, dns, 53, Udp, &all, 5353, Seen::Client);
        spread(
            t,
            o5(f),
            node_ip(f),
            30053,
            Udp,
            &all,
            5353,
            Seen::Masqueraded,
        );
        spread(t, Client::Node, dns, 53, Udp, &all, 5353, Seen::Masqueraded);
        // SCTP: the backend's raw listener sees the INIT, DNATed to its own address and
        // the target port, from the pod (ClusterIP) or from the node (NodePort, masqueraded).
        spread(
            t,
            CLIENT,
            dns,
            SCTP_PORT,
            Sctp,
            &all,
            SCTP_PORT,
            Seen::Client,
        );
        spread(
            t,
            o5(f),
            node_ip(f),
            30905,
            Sctp,
            &all,
            SCTP_PORT,
            Seen::Masqueraded,
        );
    });
}

#[test]
fn updates_keep_established_connections() {
    let svcs = services();
    let Some(t) = lab("updates", false, &svcs, &[]) else {
        return;
    };
    // One long-lived connection per family through the web ClusterIP.
    let hold = Duration::from_millis(3000);
    let held: Vec<_> = [Family::V4, Family::V6]
        .into_iter()
        .map(|f| {
            let web = svc_ip(f, "web");
            let h = t.hold(CLIENT, web, 80, hold);
            let probe = t.probe(CLIENT, web, 80, Tcp);
            agree(&t, &probe, &t.trace(&probe), &h.first, Duration::ZERO);
            (f, h)
        })
        .collect();
    let mut pinned = BTreeSet::new();
    for (f, h) in &held {
        let server = h
            .first
            .server()
            .unwrap_or_else(|| panic!("{f}: {:?}", h.first));
        pinned.insert(server);
    }
    // Remove a web endpoint neither held connection uses, add A2, delete "gone".
    let removed = ["A1", "B1", "B2"]
        .into_iter()
        .find(|p| {
            !pinned.contains(&pod_ip(Family::V4, p)) && !pinned.contains(&pod_ip(Family::V6, p))
        })
        .expect("three endpoints, two held connections");
    let mut next: Vec<Svc> = svcs.into_iter().filter(|s| s.name != "gone").collect();
    let web = next.iter_mut().find(|s| s.name == "web").expect("web");
    web.endpoints.retain(|(p, _)| *p != removed);
    web.endpoints.push(("A2", ready));
    program(&t, &next, &[]);
    for (_, h) in &held {
        assert!(
            Instant::now() < h.second_at,
            "the update took longer than the hold time: the test proves nothing"
        );
    }
    both(|f| {
        let want: Vec<&str> = ["A1", "B1", "B2", "A2"]
            .into_iter()
            .filter(|p| *p != removed)
            .collect();
        spread(
            &t,
            CLIENT,
            svc_ip(f, "web"),
            80,
            Tcp,
            &want,
            8080,
            Seen::Client,
        );
        // The deleted service's address is now an unallocated ServiceCIDR address.
        dropped(&t, CLIENT, svc_ip(f, "gone"), 80, Tcp);
    });
    for (f, h) in held {
        let first = h.first.clone();
        let second = h.finish();
        assert_eq!(second, first, "{f}: the held connection after the update");
    }
}

/// `kproxy trace --node -o json` run in the node namespace for `from` → `to:port/tcp`,
/// with the manifests `file` and the lab's flags given too (so it also compares).
fn trace_node(t: &Topology, file: &str, from: Client, to: IpAddr, port: u16) -> serde_json::Value {
    let from = match from {
        Client::Node => "node".to_string(),
        c => t.source_of(c, to).to_string(),
    };
    let dst = EndpointAddr { ip: to, port };
    let mut args = vec![
        "trace".to_string(),
        "--node".into(),
        format!("--from={from}"),
        format!("--to={dst}/tcp"),
        "-o".into(),
        "json".into(),
        "-f".into(),
        file.into(),
    ];
    args.extend(flags(&[]));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = t.node.exec(env!("CARGO_BIN_EXE_kproxy"), &refs);
    assert!(
        o.status.success(),
        "kproxy trace --node failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("trace --node JSON")
}

#[test]
fn trace_node_agrees_with_real_packets() {
    let Some(t) = lab("trace_node", false, &services(), &[]) else {
        return;
    };
    let file = std::env::temp_dir().join(format!("{}-trace-node.yaml", t.node.name));
    std::fs::write(&file, manifests(&services())).expect("write manifests");
    let file = file.to_str().expect("path").to_string();
    both(|f| {
        // (client, destination, port): ClusterIP from a pod and from the node, NodePort
        // from outside, a wrong port (reject), outside LB source ranges (drop), eTP Local.
        let probes_made = [
            (CLIENT, svc_ip(f, "web"), 80),
            (Client::Node, svc_ip(f, "web"), 80),
            (o5(f), node_ip(f), 30080),
            (CLIENT, svc_ip(f, "web"), 81),
            (x5(f), ip(f, "E2"), 80),
            (o5(f), ip(f, "E2"), 80),
            (o5(f), node_ip(f), 30081),
            (o5(f), node_ip(f), 30082),
            (Client::Node, ip(f, "E6"), 80),
            (Client::Node, ip(f, "E7"), 80),
        ];
        for (from, to, port) in probes_made {
            let j = trace_node(&t, &file, from, to, port);
            let ctx = format!("{from:?} → {to}:{port}: trace --node:\n{j:#}");
            assert_eq!(j["agree"], true, "kernel and render differ: {ctx}");
            let kernel = &j["kernel"];
            // The kernel's rules read back trace as the ruleset kproxy rendered.
            let tr = t.trace(&t.probe(from, to, port, Tcp));
            let verdict = serde_json::to_value(tr.verdict).unwrap();
            assert_eq!(kernel["verdict"], verdict, "{ctx}");
            let endpoints: Vec<String> = tr.endpoints.iter().map(|e| e.to_string()).collect();
            assert_eq!(kernel["endpoints"], serde_json::json!(endpoints), "{ctx}");
            assert_eq!(kernel["masquerade"], tr.masquerade, "{ctx}");
            // And real connections go where it says.
            for o in probes(&t, from, to, port, Tcp, 6) {
                match o {
                    Outcome::Reached { server, port, .. } => {
                        assert_eq!(kernel["verdict"], "dnat", "{o:?}: {ctx}");
                        let ep = EndpointAddr { ip: server, port }.to_string();
                        assert!(endpoints.contains(&ep), "{o:?}: {ctx}");
                    }
                    Outcome::Refused => assert_eq!(kernel["verdict"], "reject", "{ctx}"),
                    Outcome::Timeout => assert_eq!(kernel["verdict"], "drop", "{ctx}"),
                    o => panic!("{o:?}: {ctx}"),
                }
            }
        }
    });
    let _ = std::fs::remove_file(&file);
}

/// χ² of observed counts against an even split. Exceeding the critical value at
/// p = 10⁻⁶ (Wilson–Hilferty) means the split is not uniform; a fair split fails once in
/// a million runs.
fn chi_squared_uneven(counts: &[usize]) -> Option<f64> {
    let n: usize = counts.iter().sum();
    let k = counts.len() as f64;
    let expected = n as f64 / k;
    let chi2: f64 = counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    let dof = k - 1.0;
    let z = 4.75; // one-sided 10⁻⁶
    let crit = dof * (1.0 - 2.0 / (9.0 * dof) + z * (2.0 / (9.0 * dof)).sqrt()).powi(3);
    (chi2 > crit).then_some(chi2)
}

#[test]
fn connections_split_evenly_over_the_endpoints() {
    in_lab("even_split", false, |t, f| {
        for (svc, pods, per_pod) in [
            ("web", &["A1", "B1", "B2"][..], 40),
            ("even", &["A1", "A2", "A3", "B1", "B2", "B3"][..], 30),
        ] {
            let to = svc_ip(f, svc);
            let want: Vec<IpAddr> = pods.iter().map(|p| pod_ip(f, p)).collect();
            let mut counts = vec![0usize; want.len()];
            for o in probes(t, CLIENT, to, 80, Tcp, per_pod * want.len()) {
                let Outcome::Reached { server, .. } = o else {
                    panic!("{svc}: {o:?}");
                };
                let i = want.iter().position(|w| *w == server);
                counts[i.unwrap_or_else(|| panic!("{svc}: reached {server}"))] += 1;
            }
            assert!(
                counts.iter().all(|&c| c > 0),
                "{svc}: an endpoint never answered: {counts:?}"
            );
            if let Some(chi2) = chi_squared_uneven(&counts) {
                panic!("{svc}: uneven split {counts:?} (χ² = {chi2:.1})");
            }
        }
    });
}
