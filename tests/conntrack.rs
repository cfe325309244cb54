//! Stale UDP conntrack cleanup with real packets (`kproxy::conntrack::Conntrack`), IPv4 and
//! IPv6: UDP clients that keep one socket (one source port, so one conntrack entry that
//! every datagram refreshes) talk to a dual-stack UDP service — its ClusterIP from a pod,
//! its NodePort from the outside network — in the packet-test topology
//! (`common::topology`), while the service's endpoints change under them.
//!
//! Each test shows the kernel's state before cleanup (the next datagram still goes where
//! the old entry pins it, and the `conntrack` CLI lists that entry), runs the cleaner in the
//! node namespace with the service ports of the new manifests, and shows what the kernel
//! holds and where the next datagram goes afterwards.
//!
//! The oracle for the conntrack table is the `conntrack` CLI (conntrack-tools, installed by
//! `scripts/setup`); without it, kproxy's own dump stands in (one printed line says so).
//! Needs root; elsewhere (CI unset) each test prints one line and skips. Every namespace
//! is removed when the topology drops, also on failure.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Once;

use common::topology::{cidr, node_ip, outside_ip, pod_ip, Topology};
use common::udp::{pinned_to, pod_netns, Answer, UdpClient};
use common::{in_netns, kernel_tests_enabled};
use kproxy::conntrack::{Conntrack, Flow};
use kproxy::model::{Model, NodePortIps, Protocol};
use kproxy::nft::Family;
use kproxy::sync::FlowCleaner;
use kproxy::testutil::fixtures::{self as fx, service_port};

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];
const SVC_PORT: u16 = 53;
const TARGET_PORT: u16 = 5353;
const NODE_PORT: u16 = 30053;
/// The pod that sends (endpoints are A1 and A2).
const CLIENT_POD: &str = "A3";

// ---------------------------------------------------------------------------------------
// Manifests.

fn cluster_ip(f: Family) -> IpAddr {
    match f {
        Family::V4 => "10.96.0.10".parse().unwrap(),
        Family::V6 => "fd00:10:96::10".parse().unwrap(),
    }
}

fn fam(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

fn node_manifests() -> String {
    fx::manifests(&common::node_objects())
}

/// The node, the ServiceCIDRs, the dual-stack UDP service `t/dns` (port 53 → 5353,
/// NodePort 30053) and one EndpointSlice per family listing `endpoints` (pods).
fn manifests(endpoints: &[&str]) -> String {
    let mut o = common::node_objects();
    let (v4, v6) = (
        cluster_ip(Family::V4).to_string(),
        cluster_ip(Family::V6).to_string(),
    );
    let dns = fx::svc("t", "dns")
        .type_("NodePort")
        .dual_stack(&v4, &v6)
        .port("dns", SVC_PORT.into(), "UDP")
        .target_port(TARGET_PORT.into())
        .node_port(NODE_PORT.into());
    o.services.push(dns.build());
    if !endpoints.is_empty() {
        for f in FAMILIES {
            let eps = endpoints
                .iter()
                .map(|p| fx::ep(&pod_ip(f, p).to_string()).node("node-a"));
            let slice = fx::slice("t", &format!("dns-{}", fam(f).to_lowercase()), "dns")
                .address_type(fam(f))
                .port("dns", TARGET_PORT.into(), "UDP")
                .endpoints(eps);
            o.slices.push(slice.build());
        }
    }
    fx::manifests(&o)
}

fn flags() -> Vec<String> {
    vec![
        "--hostname-override=node-a".to_string(),
        format!(
            "--cluster-cidr={},{}",
            cidr(Family::V4, "cluster"),
            cidr(Family::V6, "cluster")
        ),
    ]
}

/// Programs the node with these endpoints (`kproxy apply`) and returns the model the
/// cleaner is given, as the sync loop would.
fn program(t: &Topology, endpoints: &[&str]) -> Model {
    program_yaml(t, &manifests(endpoints))
}

fn program_yaml(t: &Topology, yaml: &str) -> Model {
    let flags = flags();
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    t.program(yaml, &refs);
    common::pipeline(yaml, &refs).0
}

// ---------------------------------------------------------------------------------------
// Clients.

/// A pod's client to the ClusterIP.
fn pod_client(t: &Topology, f: Family) -> UdpClient {
    let ns = pod_netns(t, CLIENT_POD);
    let from = pod_ip(f, CLIENT_POD);
    UdpClient::new(
        &ns,
        from,
        SocketAddr::new(cluster_ip(f), SVC_PORT),
        TARGET_PORT,
        format!("{CLIENT_POD} → ClusterIP {}", cluster_ip(f)),
    )
}

/// An outside client to the NodePort on the node's primary address.
fn outside_client(t: &Topology, f: Family) -> UdpClient {
    UdpClient::new(
        &t.outside.name,
        outside_ip(f, "O"),
        SocketAddr::new(node_ip(f), NODE_PORT),
        TARGET_PORT,
        format!("outside → NodePort {}", node_ip(f)),
    )
}

// ---------------------------------------------------------------------------------------
// The conntrack table.

/// One UDP entry of the node's table, as the oracle lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    orig_dst: IpAddr,
    orig_dport: u16,
    reply_src: IpAddr,
}

fn conntrack_cli() -> bool {
    static NOTE: Once = Once::new();
    let found = Command::new("conntrack").arg("--version").output().is_ok();
    if !found {
        NOTE.call_once(|| {
            println!("conntrack CLI not installed: kproxy's own dump is the table oracle");
        });
    }
    found
}

/// The node's UDP entries of family `f` whose original source port is `sport`.
fn entries(t: &Topology, f: Family, sport: u16) -> Vec<Entry> {
    table(t, f, Some(sport))
}

/// The node's UDP entries of family `f` to the service (ClusterIP or NodePort).
fn service_entries(t: &Topology, f: Family) -> Vec<Entry> {
    table(t, f, None)
        .into_iter()
        .filter(|e| {
            (e.orig_dst, e.orig_dport) == (cluster_ip(f), SVC_PORT)
                || (e.orig_dst, e.orig_dport) == (node_ip(f), NODE_PORT)
        })
        .collect()
}

/// The node's UDP entries of family `f` (with original source port `sport`).
fn table(t: &Topology, f: Family, sport: Option<u16>) -> Vec<Entry> {
    if conntrack_cli() {
        let fam = match f {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        };
        let sport_s = sport.map(|p| p.to_string());
        let mut args = vec!["-L", "-f", fam, "-p", "udp"];
        if let Some(p) = &sport_s {
            args.extend(["--sport", p.as_str()]);
        }
        let o = t.node.exec("conntrack", &args);
        assert!(o.status.success(), "conntrack -L: {o:?}");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(|l| {
                let vals = |key: &str| -> Vec<String> {
                    l.split_whitespace()
                        .filter_map(|w| w.strip_prefix(key).map(String::from))
                        .collect()
                };
                let (src, dst, dport) = (vals("src="), vals("dst="), vals("dport="));
                assert!(src.len() >= 2 && dst.len() >= 2, "conntrack line {l:?}");
                Entry {
                    orig_dst: dst[0].parse().expect("dst"),
                    orig_dport: dport[0].parse().expect("dport"),
                    reply_src: src[1].parse().expect("reply src"),
                }
            })
            .collect()
    } else {
        let flows: Vec<Flow> = in_node(t, move |ct| {
            ct.udp_flows(f, &mut |fl| sport.is_none_or(|p| fl.orig.sport == p))
                .expect("dump")
                .0
        });
        flows
            .iter()
            .map(|fl| Entry {
                orig_dst: fl.orig.dst,
                orig_dport: fl.orig.dport,
                reply_src: fl.reply.src,
            })
            .collect()
    }
}

/// Runs `f` with a ctnetlink socket in the node namespace.
fn in_node<T: Send + 'static>(
    t: &Topology,
    f: impl FnOnce(&mut Conntrack) -> T + Send + 'static,
) -> T {
    in_netns(&t.node.name, move || {
        let mut ct = Conntrack::open().expect("ctnetlink socket");
        f(&mut ct)
    })
}

/// What the sync loop does after a sync: the cleaner, in the node, with the model's UDP
/// ports of `f` and its NodePort addresses. Returns the number of entries deleted.
fn clean(t: &Topology, model: &Model, f: Family) -> usize {
    let fm = model.family(f).expect("family in the model");
    let ports: Vec<_> = fm
        .services
        .iter()
        .filter(|sp| sp.name.protocol == Protocol::Udp)
        .cloned()
        .collect();
    assert!(!ports.is_empty(), "the model has the UDP service");
    let node_addrs = match &fm.settings.nodeport_ips {
        NodePortIps::Ips(ips) => ips.clone(),
        NodePortIps::All => panic!("the default nodePortAddresses list the primary IP"),
    };
    assert_eq!(node_addrs, vec![node_ip(f)]);
    in_node(t, move |ct| {
        ct.clean(f, &ports, &node_addrs).expect("conntrack cleanup")
    })
}

fn lab(test: &str) -> Option<Topology> {
    if !kernel_tests_enabled(test) {
        return None;
    }
    Some(Topology::new(3, 0, false))
}

fn a(f: Family, pod: &str) -> IpAddr {
    pod_ip(f, pod)
}

// ---------------------------------------------------------------------------------------
// Tests.

fn count(es: &[Entry], reply_src: IpAddr) -> usize {
    es.iter().filter(|e| e.reply_src == reply_src).count()
}

/// An endpoint goes away: clients pinned to it keep reaching it until the cleaner deletes
/// their entries (exactly the entries the table holds to it); then they reach the
/// remaining endpoint. Entries to the remaining endpoint, and the other family's, are kept.
#[test]
fn removed_endpoint_flows_are_deleted_and_move_to_the_remaining_endpoint() {
    let Some(t) = lab("removed_endpoint_flows_are_deleted_and_move_to_the_remaining_endpoint")
    else {
        return;
    };
    for f in FAMILIES {
        program(&t, &["A1", "A2"]);
        let (a1, a2) = (a(f, "A1"), a(f, "A2"));
        let stale_pod = pinned_to(|| pod_client(&t, f), a1);
        let stale_out = pinned_to(|| outside_client(&t, f), a1);
        let keeper = pinned_to(|| pod_client(&t, f), a2);
        for c in [&stale_pod, &stale_out] {
            for _ in 0..3 {
                assert_eq!(
                    c.ask(),
                    Answer::From(a1),
                    "{}: one entry, one endpoint",
                    c.what
                );
            }
        }
        assert_eq!(
            entries(&t, f, stale_pod.sport()),
            vec![Entry {
                orig_dst: cluster_ip(f),
                orig_dport: SVC_PORT,
                reply_src: a1
            }]
        );
        assert_eq!(
            entries(&t, f, stale_out.sport()),
            vec![Entry {
                orig_dst: node_ip(f),
                orig_dport: NODE_PORT,
                reply_src: a1
            }]
        );

        // A1 leaves the service (its server keeps running, like a pod being replaced).
        let model = program(&t, &["A2"]);
        for c in [&stale_pod, &stale_out] {
            assert_eq!(
                c.ask(),
                Answer::From(a1),
                "{}: without cleanup the old entry still pins the removed endpoint",
                c.what
            );
            assert_eq!(entries(&t, f, c.sport())[0].reply_src, a1);
        }
        // The other family's clean leaves this family's entries alone.
        let other = match f {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        };
        let before = service_entries(&t, f);
        clean(&t, &model, other);
        assert_eq!(
            service_entries(&t, f),
            before,
            "{other:?} clean touched {f:?}"
        );

        // The pinning clients, plus the clients `pinned_to` dropped after they hit A1.
        let to_a1 = count(&before, a1);
        assert!(to_a1 >= 2, "{before:?}");
        assert_eq!(
            clean(&t, &model, f),
            to_a1,
            "{f:?}: every entry to A1: {before:?}"
        );
        let after = service_entries(&t, f);
        assert_eq!(count(&after, a1), 0, "{after:?}");
        assert_eq!(count(&after, a2), count(&before, a2), "entries to A2 kept");
        assert_eq!(after.len(), count(&after, a2), "{after:?}");
        assert_eq!(entries(&t, f, stale_pod.sport()), vec![]);
        assert_eq!(entries(&t, f, stale_out.sport()), vec![]);
        assert_eq!(entries(&t, f, keeper.sport())[0].reply_src, a2);

        for c in [&stale_pod, &stale_out, &keeper] {
            assert_eq!(c.ask(), Answer::From(a2), "{}: after cleanup", c.what);
        }
        assert_eq!(entries(&t, f, stale_pod.sport())[0].reply_src, a2);
        assert_eq!(entries(&t, f, stale_out.sport())[0].reply_src, a2);
        assert_eq!(clean(&t, &model, f), 0, "{f:?}: nothing stale any more");
    }
}

/// The service scales to zero: pinned clients keep reaching the old endpoint until the
/// cleaner deletes every entry of the service; then they are refused (no endpoints:
/// reject).
#[test]
fn scale_to_zero_deletes_every_flow_of_the_service() {
    let Some(t) = lab("scale_to_zero_deletes_every_flow_of_the_service") else {
        return;
    };
    program(&t, &["A1", "A2"]);
    let clients: Vec<(Family, UdpClient, UdpClient)> = FAMILIES
        .iter()
        .map(|&f| {
            (
                f,
                pinned_to(|| pod_client(&t, f), a(f, "A1")),
                pinned_to(|| outside_client(&t, f), a(f, "A2")),
            )
        })
        .collect();
    let model = program(&t, &[]);
    for (f, pod, out) in &clients {
        let f = *f;
        assert_eq!(pod.ask(), Answer::From(a(f, "A1")), "{}: pinned", pod.what);
        assert_eq!(out.ask(), Answer::From(a(f, "A2")), "{}: pinned", out.what);
        let before = service_entries(&t, f);
        assert!(before.len() >= 2, "{before:?}");
        assert!(
            before.iter().all(|e| e.reply_src != e.orig_dst),
            "{before:?}"
        );
        assert_eq!(clean(&t, &model, f), before.len(), "{f:?}: {before:?}");
        assert_eq!(service_entries(&t, f), vec![]);
        for c in [pod, out] {
            assert_eq!(c.ask(), Answer::Refused, "{}: no endpoints now", c.what);
        }
        // The rejected datagrams leave no entry: nothing for the next clean.
        assert_eq!(service_entries(&t, f), vec![]);
        assert_eq!(clean(&t, &model, f), 0, "{f:?}: nothing stale any more");
    }
}

/// From zero: a client that sent before the service existed (NodePort: the node's own
/// stack refused the datagram, and that un-NATed entry was confirmed) stays stuck after
/// the service got endpoints — every datagram matches the old entry and bypasses the
/// DNAT — until the cleaner deletes the entry. Clients that sent while the service
/// existed without endpoints were rejected before their entry was confirmed, and clients
/// of the unknown ClusterIP were dropped: neither left an entry, both reach an endpoint.
#[test]
fn scale_from_zero_unsticks_clients_that_sent_while_empty() {
    let Some(t) = lab("scale_from_zero_unsticks_clients_that_sent_while_empty") else {
        return;
    };
    let endpoint =
        |f: Family, got: Answer| got == Answer::From(a(f, "A1")) || got == Answer::From(a(f, "A2"));
    let not_dnated = |f: Family| Entry {
        orig_dst: node_ip(f),
        orig_dport: NODE_PORT,
        reply_src: node_ip(f),
    };

    // No service yet.
    program_yaml(&t, &node_manifests());
    let early: Vec<(UdpClient, UdpClient)> = FAMILIES
        .iter()
        .map(|&f| {
            let (pod, out) = (pod_client(&t, f), outside_client(&t, f));
            assert_eq!(
                pod.ask(),
                Answer::Timeout,
                "{}: unallocated, dropped",
                pod.what
            );
            assert_eq!(out.ask(), Answer::Refused, "{}: no such port", out.what);
            assert_eq!(entries(&t, f, pod.sport()), vec![], "{}", pod.what);
            assert_eq!(
                entries(&t, f, out.sport()),
                vec![not_dnated(f)],
                "{}",
                out.what
            );
            (pod, out)
        })
        .collect();

    // The service, no endpoints: rejected, no entry; the early entry is kept (nowhere
    // better to send it).
    let model = program(&t, &[]);
    let empty: Vec<(UdpClient, UdpClient)> = FAMILIES
        .iter()
        .zip(&early)
        .map(|(&f, (_, early_out))| {
            let (pod, out) = (pod_client(&t, f), outside_client(&t, f));
            for c in [&pod, &out] {
                assert_eq!(c.ask(), Answer::Refused, "{}: no endpoints", c.what);
                assert_eq!(entries(&t, f, c.sport()), vec![], "{}", c.what);
            }
            assert_eq!(
                clean(&t, &model, f),
                0,
                "{f:?}: no endpoints, nothing to fix"
            );
            assert_eq!(entries(&t, f, early_out.sport()), vec![not_dnated(f)]);
            (pod, out)
        })
        .collect();

    // Endpoints appear.
    let model = program(&t, &["A1", "A2"]);
    for (i, &f) in FAMILIES.iter().enumerate() {
        let (early_pod, early_out) = &early[i];
        let (empty_pod, empty_out) = &empty[i];
        assert_eq!(
            early_out.ask(),
            Answer::Refused,
            "{}: without cleanup the early entry bypasses the new DNAT",
            early_out.what
        );
        let before = service_entries(&t, f);
        assert_eq!(before, vec![not_dnated(f)], "{f:?}");
        assert_eq!(clean(&t, &model, f), 1, "{f:?}: {before:?}");
        assert_eq!(service_entries(&t, f), vec![], "{f:?}");
        for c in [early_out, early_pod, empty_pod, empty_out] {
            let got = c.ask();
            assert!(endpoint(f, got), "{}: {got:?} with endpoints", c.what);
            let e = entries(&t, f, c.sport());
            assert_eq!(e.len(), 1, "{}: {e:?}", c.what);
            assert!(endpoint(f, Answer::From(e[0].reply_src)), "{e:?}");
        }
        assert_eq!(clean(&t, &model, f), 0, "{f:?}: nothing stale any more");
    }
}

/// A big table in a throwaway namespace (no topology: entries inserted with
/// `conntrack -R`): the dump spans many multipart datagrams, the deletes many sends, zoned
/// entries are deleted by zone, and only stale UDP entries of the family asked go.
#[test]
fn big_table_only_stale_udp_entries_of_the_family_go() {
    if !kernel_tests_enabled("big_table_only_stale_udp_entries_of_the_family_go") {
        return;
    }
    if !conntrack_cli() {
        return; // the entries are inserted with the CLI
    }
    const N: usize = 3000;
    let ns = common::Netns::new("ct-big");
    let mut load = String::new();
    for i in 0..N {
        let (hi, lo, sport) = (i / 250, i % 250 + 1, 10000 + i);
        // Half answered by the endpoint that stays (…11), half by one that went (…12).
        let ep = 11 + i % 2;
        load.push_str(&format!(
            "-I -s 10.1.{hi}.{lo} -d 10.96.0.10 -p udp --sport {sport} --dport 53 \
             --reply-src 10.244.1.{ep} --reply-dst 10.1.{hi}.{lo} --reply-port-src 5353 \
             --reply-port-dst {sport} -t 300\n\
             -I -s fd00:1::{i:x} -d fd00:10:96::10 -p udp --sport {sport} --dport 53 \
             --reply-src fd00:10:244:1::{ep} --reply-dst fd00:1::{i:x} --reply-port-src 5353 \
             --reply-port-dst {sport} -t 300\n"
        ));
    }
    load.push_str(
        "-I -s 10.9.9.9 -d 10.96.0.10 -p tcp --sport 1 --dport 53 --reply-src 10.244.1.12 \
         --reply-dst 10.9.9.9 --reply-port-src 5353 --reply-port-dst 1 --state ESTABLISHED -t 300\n\
         -I -s 10.9.9.9 -d 10.96.0.11 -p udp --sport 1 --dport 53 --reply-src 10.244.1.12 \
         --reply-dst 10.9.9.9 --reply-port-src 5353 --reply-port-dst 1 -t 300\n\
         -I -s 10.9.9.8 -d 10.96.0.10 -p udp --sport 2 --dport 53 --reply-src 10.244.1.12 \
         --reply-dst 10.9.9.8 --reply-port-src 5353 --reply-port-dst 2 -t 300 --zone 7\n",
    );
    let file = std::env::temp_dir().join(format!("{}.ct", ns.name));
    std::fs::write(&file, load).expect("write load file");
    let o = ns.exec("conntrack", &["-R", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(o.status.success(), "conntrack -R: {o:?}");
    let count = |args: &[&str]| -> usize {
        let o = ns.exec("conntrack", &[&["-L"], args].concat());
        assert!(o.status.success(), "conntrack -L {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).lines().count()
    };
    assert_eq!(count(&[]), 2 * N + 3);

    let mut port = service_port("t", "dns", "dns", Protocol::Udp)
        .cluster_ip("10.96.0.10")
        .port(SVC_PORT)
        .cluster_endpoint("10.244.1.11", TARGET_PORT)
        .build();
    let ports = vec![port.clone()];
    let name = ns.name.clone();
    let (deleted, examined) = in_netns(&name, move || {
        let mut ct = Conntrack::open().expect("ctnetlink");
        let filter = kproxy::conntrack::StaleFilter::new(Family::V4, &ports, &[]);
        let st = ct.clean_stale(Family::V4, &filter).expect("clean");
        (st.deleted, st.examined)
    });
    // The kernel filtered the dump to UDP of the family: every v4 UDP entry, nothing else.
    assert_eq!(examined, N + 2);
    assert_eq!(deleted, N / 2 + 1, "the stale half plus the zoned one");
    assert_eq!(
        count(&["-f", "ipv4", "-p", "udp", "--reply-src", "10.244.1.12"]),
        1
    );
    assert_eq!(
        count(&["-f", "ipv4", "-p", "udp", "--reply-src", "10.244.1.11"]),
        N / 2
    );
    assert_eq!(count(&["-p", "tcp"]), 1, "TCP untouched");
    assert_eq!(count(&["-f", "ipv6"]), N, "IPv6 untouched by an IPv4 clean");

    // IPv6 through the trait, as the sync loop calls it.
    port.cluster_ip = "fd00:10:96::10".parse().unwrap();
    port.cluster_endpoints[0].ip = "fd00:10:244:1::11".parse().unwrap();
    let ports = vec![port];
    let deleted = in_netns(&name, move || {
        let mut ct = Conntrack::open().expect("ctnetlink");
        ct.clean(Family::V6, &ports, &[]).expect("clean")
    });
    assert_eq!(deleted, N / 2);
    assert_eq!(count(&["-f", "ipv6"]), N / 2);
    assert_eq!(
        count(&["-f", "ipv6", "--reply-src", "fd00:10:244:1::11"]),
        N / 2
    );
}
