//! Unit tests of `kproxy trace`: destinations, host facts, kernel-vs-render differences.

use super::*;

#[test]
fn destinations() {
    assert_eq!(
        parse_destination("10.96.0.10:53/udp").unwrap(),
        ("10.96.0.10".parse().unwrap(), 53, Protocol::Udp)
    );
    assert_eq!(
        parse_destination("[fd00::10]:80").unwrap(),
        ("fd00::10".parse().unwrap(), 80, Protocol::Tcp)
    );
    assert!(parse_destination("10.96.0.10:53/icmp").is_err());
    assert!(parse_destination("10.96.0.10").is_err());
    assert!(parse_destination("10.96.0.10:70000/tcp").is_err());
}

use clap::Parser;

use crate::nft::{ElementData, Value};

#[derive(Parser)]
struct Cmd {
    #[command(flatten)]
    trace: TraceArgs,
}

const SCENARIO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/rules/scenarios/clusterip/manifests.yaml"
);

/// The clusterip scenario rendered for node-a, as `trace -f` prepares it.
fn scenario() -> super::super::input::Prepared {
    prepared(SCENARIO)
}

/// The manifests `file` rendered for node-a, as `trace -f` prepares them.
fn prepared(file: &str) -> super::super::input::Prepared {
    let args = [
        "trace",
        "-f",
        file,
        "--hostname-override=node-a",
        "--cluster-cidr=10.244.0.0/16,fd00:10:244::/56",
        "--from=node",
        "--to=10.96.0.20:80",
    ];
    let cmd = Cmd::try_parse_from(args).expect("arguments");
    prepare(&cmd.trace.input)
        .map_err(|f| f.message)
        .expect("prepare")
}

fn pod_probe() -> Probe {
    Probe {
        origin: Origin::Pod {
            iifname: "cni0".into(),
        },
        src: "10.244.1.7".parse().unwrap(),
        dst: "10.96.0.20".parse().unwrap(),
        proto: Protocol::Tcp,
        port: 80,
    }
}

#[test]
fn routes_from_proc() {
    // /proc/net/route prints addresses as the kernel's in-memory u32 (little-endian here).
    let v4 = [
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT",
        "eth0\t00000000\t0132A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0",
        "eth0\t0032A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
        "cni0\t0001F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
        "down\t0002F40A\t00000000\t0000\t0\t0\t0\t00FFFFFF\t0\t0\t0",
    ];
    if cfg!(target_endian = "little") {
        let routes = || v4.iter().filter_map(|l| node::parse_route_v4(l));
        assert_eq!(routes().count(), 3);
        let best = |ip: &str| node::best_route(routes(), ip.parse().unwrap());
        assert_eq!(best("10.244.1.7").as_deref(), Some("cni0"));
        assert_eq!(best("192.168.50.1").as_deref(), Some("eth0"));
        assert_eq!(best("198.51.100.5").as_deref(), Some("eth0"));
        assert_eq!(best("10.244.2.7").as_deref(), Some("eth0"));
    }
    let v6 = [
        "fd00001002440001000000000000000040 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     cni0",
        "fd000010024400010000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     cni0",
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000050000000000000000000000001 00000400 00000001 00000000 00000003     eth0",
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo",
    ];
    let routes = || v6.iter().filter_map(|l| node::parse_route_v6(l));
    assert_eq!(routes().count(), 2);
    let best = |ip: &str| node::best_route(routes(), ip.parse().unwrap());
    assert_eq!(best("fd00:10:244:1::17").as_deref(), Some("cni0"));
    assert_eq!(best("2001:db8:100::5").as_deref(), Some("eth0"));
}

#[test]
fn pod_network_as_the_ruleset_states_it() {
    let p = scenario();
    let v4 = node::PodNetwork::of(&p.ruleset, Family::V4);
    assert_eq!(v4.cidrs, vec!["10.244.0.0/16".parse().unwrap()]);
    assert!(v4.contains("10.244.3.3".parse().unwrap(), "eth0"));
    assert!(!v4.contains("192.168.1.1".parse().unwrap(), "eth0"));
    let v6 = node::PodNetwork::of(&p.ruleset, Family::V6);
    assert_eq!(v6.cidrs, vec!["fd00:10:244::/56".parse().unwrap()]);
    let by_iface = node::PodNetwork {
        cidrs: vec![],
        ifaces: vec!["veth*".into(), "cbr0".into()],
    };
    assert!(by_iface.contains("1.2.3.4".parse().unwrap(), "veth12"));
    assert!(by_iface.contains("1.2.3.4".parse().unwrap(), "cbr0"));
    assert!(!by_iface.contains("1.2.3.4".parse().unwrap(), "eth0"));
}

#[test]
fn a_hand_changed_kernel_ruleset_is_reported_as_different() {
    let p = scenario();
    let host = Host {
        local_addrs: vec!["192.168.1.10".parse().unwrap()],
    };
    let probe = pod_probe();
    let rendered = trace::trace(&p.ruleset, &host, &probe);
    let same = trace::trace(&p.ruleset.clone(), &host, &probe);
    assert!(node::differences(&same, &rendered).is_empty());
    let text = node_text(&probe, &same, Some(&rendered));
    assert!(text.contains("the kernel and the render agree"), "{text}");

    // By hand: the range of shop/web:http's third endpoint now points at a pod the
    // objects do not name.
    let mut kernel = p.ruleset.clone();
    let table = kernel.tables.iter_mut().find(|t| t.family == Family::V4);
    let map = table
        .unwrap()
        .sets
        .get_mut("endpoints-0")
        .expect("endpoint map");
    let third = ElementData::Values(vec![
        Value::Addr("10.244.3.9".parse().unwrap()),
        Value::Port(8080),
    ]);
    let mut e = map
        .elements
        .iter()
        .find(|e| e.data == third)
        .expect("the third endpoint's range")
        .clone();
    e.data = ElementData::Values(vec![
        Value::Addr("10.244.9.9".parse().unwrap()),
        Value::Port(8080),
    ]);
    map.elements.insert(e);
    let k = trace::trace(&kernel, &host, &probe);
    let diffs = node::differences(&k, &rendered);
    assert_eq!(
        diffs,
        vec![
            "endpoints: only in the kernel: 10.244.9.9:8080; only in the render: 10.244.3.9:8080"
                .to_string()
        ]
    );
    let text = node_text(&probe, &k, Some(&rendered));
    assert!(
        text.contains("DIFFERENT: this node's kernel does not hold"),
        "{text}"
    );
    let json = node_json(&host, &k, Some(&rendered));
    assert_eq!(json["agree"], serde_json::json!(false));
    assert_eq!(json["differences"][0], serde_json::json!(diffs[0]));

    // By hand: the service's chain emptied: the kernel no longer DNATs at all.
    let table = kernel.tables.iter_mut().find(|t| t.family == Family::V4);
    let chain = table
        .unwrap()
        .chains
        .values_mut()
        .find(|c| c.name.ends_with("shop/web/tcp/http"))
        .expect("service chain");
    chain.rules.clear();
    let k = trace::trace(&kernel, &host, &probe);
    let diffs = node::differences(&k, &rendered);
    assert!(
        diffs[0].starts_with("verdict: the kernel's rules "),
        "{diffs:?}"
    );
    assert!(diffs[0].ends_with("the render dnat"), "{diffs:?}");
}

/// A dual-stack eTP=Local LoadBalancer (an externalIP and an LB IP per family) whose
/// endpoints are all on node-b, rendered for node-a as `trace -f` prepares it.
fn etp_remote_only() -> super::super::input::Prepared {
    use crate::testutil::fixtures as fx;
    let mut o = Objects {
        nodes: vec![fx::node("node-a")
            .pod_cidrs(&["10.244.1.0/24", "fd00:10:244:1::/64"])
            .internal_ip("192.168.50.10")
            .internal_ip("fd00:50::10")
            .build()],
        service_cidrs: vec![
            fx::service_cidr("kubernetes", &["10.96.0.0/16", "fd00:10:96::/112"]).build(),
        ],
        ..Objects::default()
    };
    let svc = fx::svc("tp", "etp-remote")
        .dual_stack("10.96.2.20", "fd00:10:96::2:20")
        .type_("LoadBalancer")
        .etp_local()
        .health_check_node_port(32001)
        .external_ips(&["203.0.113.6", "2001:db8:113::6"])
        .lb_ingress("203.0.113.7")
        .lb_ingress("2001:db8:113::7")
        .port("http", 80, "TCP")
        .target_port(8080)
        .node_port(30085);
    o.services.push(svc.build());
    for (fam, eps) in [
        ("IPv4", ["10.244.2.11", "10.244.2.13"]),
        ("IPv6", ["fd00:10:244:2::11", "fd00:10:244:2::13"]),
    ] {
        let name = format!("etp-remote-{}", fam.to_lowercase());
        let slice = fx::slice("tp", &name, "etp-remote")
            .address_type(fam)
            .port("http", 8080, "TCP")
            .endpoints(eps.map(|ip| fx::ep(ip).node("node-b")));
        o.slices.push(slice.build());
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("etp-remote.yaml");
    std::fs::write(&file, fx::manifests(&o)).expect("write manifests");
    prepared(file.to_str().expect("path"))
}

/// The node's own traffic to the externalIP or LB IP of an eTP=Local service with no
/// local endpoint reaches every (remote) endpoint, masqueraded, as upstream: `nat-output`
/// (dstnat, −100) DNATs before `filter-output` (filter, 0) checks for endpoints, so the
/// VIP's no-endpoint drop never sees the packet. From outside the same VIP is dropped.
#[test]
fn node_to_etp_local_vip_without_local_endpoints_reaches_remote_endpoints() {
    let p = etp_remote_only();
    let host = Host {
        local_addrs: vec![
            "192.168.50.10".parse().unwrap(),
            "fd00:50::10".parse().unwrap(),
        ],
    };
    let cases = [
        ("192.168.50.10", ["203.0.113.6", "203.0.113.7"], "10.244.2"),
        (
            "fd00:50::10",
            ["2001:db8:113::6", "2001:db8:113::7"],
            "fd00:10:244:2",
        ),
    ];
    for (node_ip, vips, pods) in cases {
        for vip in vips {
            let probe = Probe {
                origin: Origin::Node,
                src: node_ip.parse().unwrap(),
                dst: vip.parse().unwrap(),
                proto: Protocol::Tcp,
                port: 80,
            };
            let t = trace::trace(&p.ruleset, &host, &probe);
            let ctx = t.render_text(&probe);
            assert_eq!(t.verdict, trace::TraceVerdict::Dnat, "{ctx}");
            let eps: Vec<String> = t.endpoints.iter().map(|e| e.to_string()).collect();
            let want: Vec<String> = [11, 13]
                .iter()
                .map(|n| match node_ip.contains(':') {
                    false => format!("{pods}.{n}:8080"),
                    true => format!("[{pods}::{n}]:8080"),
                })
                .collect();
            assert_eq!(eps, want, "{ctx}");
            assert!(t.masquerade, "{ctx}");
            for path in &t.paths {
                assert!(path.masquerade, "{ctx}");
                // The endpoint check ran after the DNAT, on the endpoint's address.
                let at = |chain: &str| path.steps.iter().position(|s| s.chain == chain);
                let (nat, check) = (at("nat-output"), at("service-endpoints-check"));
                assert!(nat.is_some() && check.is_some() && nat < check, "{ctx}");
            }
            let outside = Probe {
                origin: Origin::External {
                    iifname: "eth0".into(),
                },
                src: if node_ip.contains(':') {
                    "2001:db8:5::5".parse().unwrap()
                } else {
                    "198.51.100.5".parse().unwrap()
                },
                ..probe
            };
            let t = trace::trace(&p.ruleset, &host, &outside);
            let ctx = t.render_text(&outside);
            assert_eq!(t.verdict, trace::TraceVerdict::Drop, "{ctx}");
        }
    }
}
