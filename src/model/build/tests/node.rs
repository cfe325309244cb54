//! The own Node and node-level settings: node IPs, NodePort addresses, detector, masquerade.

use super::*;

// ---- node, NodePort addresses, detector, family settings --------------------------

#[test]
fn node_primary_ips_and_default_nodeport_addresses() {
    let (model, warnings) = build(&objects(vec![], vec![]), &settings());
    assert!(warnings.is_empty(), "{warnings:?}");
    let v4 = family(&model, Family::V4);
    let v6 = family(&model, Family::V6);
    // First InternalIP of the family wins over an earlier ExternalIP.
    assert_eq!(v4.settings.node_ip, Some(ip("192.168.0.10")));
    assert_eq!(v6.settings.node_ip, Some(ip("fd00::10")));
    assert_eq!(
        v4.settings.nodeport_ips,
        NodePortIps::Ips(vec![ip("192.168.0.10")])
    );
    assert_eq!(
        v6.settings.nodeport_ips,
        NodePortIps::Ips(vec![ip("fd00::10")])
    );

    // ExternalIP is the fallback; a family without a node IP matches every local
    // address (upstream: no `primary` CIDR for that family → ::/0).
    let ext_only = node(json!({"metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.10"}]}}));
    let objs = Objects {
        nodes: vec![ext_only],
        ..Objects::default()
    };
    let (model, _) = build(&objs, &settings());
    assert_eq!(
        family(&model, Family::V4).settings.node_ip,
        Some(ip("203.0.113.10"))
    );
    assert_eq!(family(&model, Family::V6).settings.node_ip, None);
    assert_eq!(
        family(&model, Family::V6).settings.nodeport_ips,
        NodePortIps::All
    );
}

#[test]
fn missing_node_is_one_warning_and_build_continues() {
    let mut objs = objects(
        vec![simple_service("web", "10.96.0.10")],
        vec![simple_slice(
            "web-1",
            "web",
            8080,
            vec![ready("10.244.1.5", "node-a")],
        )],
    );
    objs.nodes = vec![node(json!({"metadata": {"name": "node-z"}}))];
    let s = Settings {
        detect_local_mode: DetectLocalMode::NodeCidr,
        ..settings()
    };
    let (model, warnings) = build(&objs, &s);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].object, "Node node-a");
    for f in &model.families {
        assert_eq!(f.settings.node_ip, None);
        assert_eq!(f.settings.nodeport_ips, NodePortIps::All);
        assert_eq!(f.settings.local_detect, LocalDetect::None);
    }
    // Locality comes from the hostname, not the Node object.
    let sp = tcp4(&model, "ns/web");
    assert!(sp.endpoints[0].local);
    assert_eq!(sp.cluster_endpoints, addrs(&["10.244.1.5:8080"]));
}

#[test]
fn nodeport_addresses_cidrs() {
    let with = |cidrs: &[&str], local: Option<Vec<&str>>| Settings {
        nodeport_addresses: NodePortAddresses::Cidrs(cidrs.iter().map(|c| net(c)).collect()),
        local_addresses: local.map(|l| l.iter().map(|a| ip(a)).collect()),
        ..settings()
    };
    let objs = objects(vec![], vec![]);
    let run = |s: &Settings| {
        let (model, _) = build(&objs, s);
        (
            family(&model, Family::V4).settings.nodeport_ips.clone(),
            family(&model, Family::V6).settings.nodeport_ips.clone(),
        )
    };

    // Host addresses inside the CIDRs; loopback never; IPv6 has no CIDR → all.
    let s = with(
        &["192.168.0.0/24", "127.0.0.0/8"],
        Some(vec![
            "192.168.0.12",
            "127.0.0.1",
            "10.0.0.1",
            "192.168.0.5",
            "fd00::1",
        ]),
    );
    assert_eq!(
        run(&s),
        (
            NodePortIps::Ips(vec![ip("192.168.0.5"), ip("192.168.0.12")]),
            NodePortIps::All
        )
    );
    // A /0 of a family means all; a CIDR matching nothing means none.
    let s = with(&["0.0.0.0/0", "2001:db8::/64"], Some(vec!["fd00::1"]));
    assert_eq!(run(&s), (NodePortIps::All, NodePortIps::Ips(vec![])));
    // Without host addresses (dry run) the Node's addresses stand in.
    let s = with(&["192.168.0.0/24", "fd00::/64"], None);
    assert_eq!(
        run(&s),
        (
            NodePortIps::Ips(vec![ip("192.168.0.10"), ip("192.168.0.11")]),
            NodePortIps::Ips(vec![ip("fd00::10")])
        )
    );
    // An empty list matches everything.
    assert_eq!(run(&with(&[], None)), (NodePortIps::All, NodePortIps::All));
}

#[test]
fn local_detect_modes() {
    let objs = objects(vec![], vec![]);
    let detect = |s: Settings| {
        let (model, _) = build(&objs, &s);
        (
            family(&model, Family::V4).settings.local_detect.clone(),
            family(&model, Family::V6).settings.local_detect.clone(),
        )
    };
    // ClusterCIDR: the first CIDR of each family (host bits cleared).
    let s = Settings {
        cluster_cidrs: vec![net("10.244.0.0/16"), net("10.245.0.1/16")],
        ..settings()
    };
    assert_eq!(
        detect(s),
        (
            LocalDetect::SourceCidrs(vec![net("10.244.0.0/16")]),
            LocalDetect::None
        )
    );
    assert_eq!(
        detect(settings()),
        (
            LocalDetect::SourceCidrs(vec![net("10.244.0.0/16")]),
            LocalDetect::SourceCidrs(vec![net("fd00:244::/48")])
        )
    );
    // NodeCIDR: the node's podCIDRs.
    let s = Settings {
        detect_local_mode: DetectLocalMode::NodeCidr,
        ..settings()
    };
    assert_eq!(
        detect(s),
        (
            LocalDetect::SourceCidrs(vec![net("10.244.1.0/24")]),
            LocalDetect::SourceCidrs(vec![net("fd00:244:0:1::/64")])
        )
    );
    let s = Settings {
        detect_local_mode: DetectLocalMode::BridgeInterface,
        bridge_interface: "cbr0".into(),
        ..settings()
    };
    assert_eq!(
        detect(s),
        (
            LocalDetect::Interface("cbr0".into()),
            LocalDetect::Interface("cbr0".into())
        )
    );
    let s = Settings {
        detect_local_mode: DetectLocalMode::InterfaceNamePrefix,
        interface_name_prefix: "veth".into(),
        ..settings()
    };
    assert_eq!(
        detect(s),
        (
            LocalDetect::InterfacePrefix("veth".into()),
            LocalDetect::InterfacePrefix("veth".into())
        )
    );
    let s = Settings {
        detect_local_mode: DetectLocalMode::BridgeInterface,
        ..settings()
    };
    assert_eq!(detect(s), (LocalDetect::None, LocalDetect::None));
    let s = Settings {
        detect_local_mode: DetectLocalMode::None,
        ..settings()
    };
    assert_eq!(detect(s), (LocalDetect::None, LocalDetect::None));
}

#[test]
fn masquerade_settings_and_service_cidrs() {
    let mut objs = objects(vec![], vec![]);
    objs.service_cidrs = vec![
        service_cidr(json!({"metadata": {"name": "kubernetes"},
            "spec": {"cidrs": ["10.96.0.0/16", "fd00:96::/112"]}})),
        service_cidr(json!({"metadata": {"name": "extra"},
            "spec": {"cidrs": ["10.100.0.0/24", "10.96.0.0/16"]}})),
    ];
    let s = Settings {
        masquerade_all: true,
        masquerade_mark: 1 << 5,
        ..settings()
    };
    let (model, warnings) = build(&objs, &s);
    assert!(warnings.is_empty(), "{warnings:?}");
    for f in &model.families {
        assert!(f.settings.masquerade_all);
        assert_eq!(f.settings.masquerade_mark, 32);
    }
    assert_eq!(
        family(&model, Family::V4).settings.service_cidrs,
        vec![net("10.96.0.0/16"), net("10.100.0.0/24")]
    );
    assert_eq!(
        family(&model, Family::V6).settings.service_cidrs,
        vec![net("fd00:96::/112")]
    );
    let (model, _) = build(&objs, &settings());
    assert_eq!(model.families[0].settings.masquerade_mark, 0x4000);
}

#[test]
fn bad_node_and_service_cidr_fields_warn() {
    let bad_node = node(json!({"metadata": {"name": "node-a"},
        "spec": {"podCIDRs": ["10.244.1.0/24x", "fd00:244:0:1::/64"]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": "192.168.0.300"},
            {"type": "InternalIP", "address": "192.168.0.10"}]}}));
    let objs = Objects {
        nodes: vec![bad_node],
        service_cidrs: vec![service_cidr(json!({"metadata": {"name": "sc"},
            "spec": {"cidrs": ["10.96.0.0/16", "nonsense"]}}))],
        ..Objects::default()
    };
    let s = Settings {
        detect_local_mode: DetectLocalMode::NodeCidr,
        ..settings()
    };
    let (model, warnings) = build(&objs, &s);
    assert_warning(
        &warnings,
        "Node node-a",
        "status.addresses[0] (InternalIP) \"192.168.0.300\" is not an IP address",
    );
    assert_warning(
        &warnings,
        "Node node-a",
        "spec.podCIDRs[0] \"10.244.1.0/24x\" is not a CIDR",
    );
    assert_warning(
        &warnings,
        "ServiceCIDR sc",
        "spec.cidrs[1] \"nonsense\" is not a CIDR",
    );
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    let v4 = family(&model, Family::V4);
    assert_eq!(v4.settings.node_ip, Some(ip("192.168.0.10")));
    assert_eq!(v4.settings.local_detect, LocalDetect::None);
    assert_eq!(v4.settings.service_cidrs, vec![net("10.96.0.0/16")]);
    assert_eq!(v4.settings.masquerade_mark, 1 << DEFAULT_MASQUERADE_BIT);
    assert_eq!(
        family(&model, Family::V6).settings.local_detect,
        LocalDetect::SourceCidrs(vec![net("fd00:244:0:1::/64")])
    );
}

#[test]
fn node_facts_eligibility_and_addresses() {
    let n = |v: Value| vec![node(v)];
    // Missing, being deleted, or tainted for deletion: not eligible.
    assert!(!NodeFacts::of(&[], "node-a").eligible);
    assert!(NodeFacts::of(&[node_a()], "node-a").eligible);
    assert!(!NodeFacts::of(&[node_a()], "node-b").eligible);
    let deleting = n(json!({"metadata": {"name": "node-a",
        "deletionTimestamp": "2024-01-01T00:00:00Z"}}));
    assert!(!NodeFacts::of(&deleting, "node-a").eligible);
    let tainted = n(json!({"metadata": {"name": "node-a"},
        "spec": {"taints": [{"key": TAINT_TO_BE_DELETED, "effect": "NoSchedule"}]}}));
    assert!(!NodeFacts::of(&tainted, "node-a").eligible);
    let other_taint = n(json!({"metadata": {"name": "node-a"},
        "spec": {"taints": [{"key": "dedicated", "effect": "NoSchedule"}]}}));
    assert!(NodeFacts::of(&other_taint, "node-a").eligible);

    // Every address that is an IP is kept with its type; node IPs are Internal/External.
    let facts = NodeFacts::of(&[node_a()], "node-a");
    assert_eq!(facts.zone, "zone-a");
    assert_eq!(
        facts.pod_cidrs,
        vec![net("10.244.1.0/24"), net("fd00:244:0:1::/64")]
    );
    assert_eq!(facts.addresses.len(), 4);
    assert_eq!(facts.primary_ip(Family::V4), Some(ip("192.168.0.10")));
    let with_hostname_ip = n(json!({"metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "Hostname", "address": "10.0.0.1"},
                                 {"type": "InternalIP", "address": "10.0.0.2"}]}}));
    let facts = NodeFacts::of(&with_hostname_ip, "node-a");
    assert_eq!(facts.addresses.len(), 2);
    assert_eq!(facts.node_ips().collect::<Vec<_>>(), vec![ip("10.0.0.2")]);
}
