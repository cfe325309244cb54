//! Endpoint selection: terminating fallback, traffic policies, topology hints.

use super::*;

#[test]
fn terminating_fallback_for_cluster_endpoints() {
    let objs = web(vec![
        terminating("10.244.2.5", "node-b"),
        // Terminating but no longer serving: never used.
        ep("10.244.2.6", "node-b", false, false, true),
        // Not ready, not terminating: never used.
        ep("10.244.2.7", "node-b", false, false, false),
    ]);
    let (model, _) = build(&objs, &settings());
    let sp = tcp4(&model, "ns/web");
    assert_eq!(sp.cluster_endpoints, addrs(&["10.244.2.5:8080"]));
    assert!(sp.has_endpoints);

    // With one ready endpoint, terminating ones are not used.
    let objs = web(vec![
        terminating("10.244.2.5", "node-b"),
        ready("10.244.3.5", "node-c"),
    ]);
    let (model, _) = build(&objs, &settings());
    assert_eq!(
        tcp4(&model, "ns/web").cluster_endpoints,
        addrs(&["10.244.3.5:8080"])
    );
}

#[test]
fn terminating_fallback_for_local_endpoints_is_separate() {
    // Remote ready, local only terminating: cluster = remote ready, local = local
    // serving-terminating.
    let objs = with_endpoints(
        etp_local_nodeport("np"),
        vec![
            ready("10.244.2.5", "node-b"),
            terminating("10.244.1.5", "node-a"),
            ep("10.244.1.6", "node-a", false, false, true),
        ],
    );
    let (model, _) = build(&objs, &settings());
    let sp = tcp4(&model, "ns/np");
    assert!(sp.external_policy_local);
    assert_eq!(sp.cluster_endpoints, addrs(&["10.244.2.5:8080"]));
    assert_eq!(sp.local_endpoints, addrs(&["10.244.1.5:8080"]));
    assert!(sp.has_endpoints);

    // Local ready as well: the local list holds only ready ones.
    let objs = with_endpoints(
        etp_local_nodeport("np"),
        vec![
            ready("10.244.1.7", "node-a"),
            terminating("10.244.1.5", "node-a"),
            ready("10.244.2.5", "node-b"),
        ],
    );
    let (model, _) = build(&objs, &settings());
    let sp = tcp4(&model, "ns/np");
    assert_eq!(sp.local_endpoints, addrs(&["10.244.1.7:8080"]));
    assert_eq!(
        sp.cluster_endpoints,
        addrs(&["10.244.1.7:8080", "10.244.2.5:8080"])
    );
}

#[test]
fn etp_local_without_local_endpoints() {
    let objs = with_endpoints(
        etp_local_nodeport("np"),
        vec![ready("10.244.2.5", "node-b")],
    );
    let (model, _) = build(&objs, &settings());
    let sp = tcp4(&model, "ns/np");
    assert!(sp.local_endpoints.is_empty());
    assert_eq!(sp.cluster_endpoints, addrs(&["10.244.2.5:8080"]));
    assert!(sp.has_endpoints, "endpoints exist elsewhere in the cluster");
    assert_eq!(sp.external_endpoints(), &[] as &[EndpointAddr]);
}

#[test]
fn itp_local_uses_only_local_list_for_cluster_ip_only_service() {
    let itp = || {
        svc("ns", "itp")
            .cluster_ip("10.96.0.10")
            .itp_local()
            .port("", 80, "")
            .build()
    };
    let eps = vec![ready("10.244.1.5", "node-a"), ready("10.244.2.5", "node-b")];
    let (model, _) = build(&with_endpoints(itp(), eps), &settings());
    let sp = tcp4(&model, "ns/itp");
    assert!(!sp.uses_cluster_endpoints());
    assert!(sp.cluster_endpoints.is_empty());
    assert_eq!(sp.local_endpoints, addrs(&["10.244.1.5:8080"]));
    assert_eq!(
        sp.internal_endpoints(),
        addrs(&["10.244.1.5:8080"]).as_slice()
    );
    assert!(sp.has_endpoints);

    // iTP Local with only remote endpoints: nothing local, but has_endpoints.
    let (model, _) = build(
        &with_endpoints(itp(), vec![ready("10.244.2.5", "node-b")]),
        &settings(),
    );
    let sp = tcp4(&model, "ns/itp");
    assert!(sp.local_endpoints.is_empty() && sp.cluster_endpoints.is_empty());
    assert!(sp.has_endpoints);
}

/// A ready endpoint with zone hints and, when `nodes` is not empty, node hints.
fn hinted(address: &str, node: &str, zones: &[&str], nodes: &[&str]) -> EndpointBuilder {
    let e = ready(address, node).zone_hints(zones);
    if nodes.is_empty() {
        e
    } else {
        e.node_hints(nodes)
    }
}

#[test]
fn topology_zone_hints_used() {
    let eps = vec![
        hinted("10.244.1.5", "node-a", &["zone-a"], &[]),
        hinted("10.244.2.5", "node-b", &["zone-b"], &[]),
        hinted("10.244.3.5", "node-c", &["zone-a"], &[]),
    ];
    let (model, _) = build(
        &with_endpoints(etp_local_nodeport("topo"), eps),
        &settings(),
    );
    let sp = tcp4(&model, "ns/topo");
    assert_eq!(
        sp.cluster_endpoints,
        addrs(&["10.244.1.5:8080", "10.244.3.5:8080"])
    );
    assert_eq!(sp.endpoints[1].zone_hints, vec!["zone-b".to_string()]);
    // Local list ignores hints (only locality matters).
    assert_eq!(sp.local_endpoints, addrs(&["10.244.1.5:8080"]));
}

#[test]
fn topology_hints_ignored_when_incomplete_or_not_for_our_zone() {
    let cases = [
        // One ready endpoint lacks a hint.
        vec![
            hinted("10.244.1.5", "node-a", &["zone-a"], &[]),
            ready("10.244.2.5", "node-b"),
        ],
        // No hint names our zone.
        vec![
            hinted("10.244.1.5", "node-a", &["zone-b"], &[]),
            hinted("10.244.2.5", "node-b", &["zone-c"], &[]),
        ],
    ];
    for eps in cases {
        assert_eq!(
            web_cluster_endpoints(eps),
            addrs(&["10.244.1.5:8080", "10.244.2.5:8080"])
        );
    }
    // Not-ready endpoints without hints do not disable topology.
    let eps = vec![
        hinted("10.244.1.5", "node-a", &["zone-a"], &[]),
        hinted("10.244.2.5", "node-b", &["zone-b"], &[]),
        terminating("10.244.3.5", "node-c"),
    ];
    assert_eq!(web_cluster_endpoints(eps), addrs(&["10.244.1.5:8080"]));
    // Without a Node object the zone is unknown: hints are not used.
    let mut objs = web(vec![
        hinted("10.244.1.5", "node-a", &["zone-a"], &[]),
        hinted("10.244.2.5", "node-b", &["zone-b"], &[]),
    ]);
    objs.nodes.clear();
    let (model, _) = build(&objs, &settings());
    assert_eq!(tcp4(&model, "ns/web").cluster_endpoints.len(), 2);
}

#[test]
fn topology_node_hints_prefer_same_node() {
    let eps = vec![
        hinted("10.244.1.5", "node-a", &["zone-a"], &["node-a"]),
        hinted("10.244.1.6", "node-x", &["zone-a"], &["node-x"]),
        hinted("10.244.2.5", "node-b", &["zone-b"], &["node-b"]),
    ];
    assert_eq!(web_cluster_endpoints(eps), addrs(&["10.244.1.5:8080"]));
    // No node hint for us: fall back to zone hints.
    let eps = vec![
        hinted("10.244.1.6", "node-x", &["zone-a"], &["node-x"]),
        hinted("10.244.2.5", "node-b", &["zone-b"], &["node-b"]),
    ];
    assert_eq!(web_cluster_endpoints(eps), addrs(&["10.244.1.6:8080"]));
}
