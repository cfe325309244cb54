//! Endpoint selection: terminating fallback, traffic policies, topology hints.

use super::*;

#[test]
fn terminating_fallback_for_cluster_endpoints() {
    let objs = objects(
        vec![simple_service("web", "10.96.0.10")],
        vec![simple_slice(
            "web-1",
            "web",
            8080,
            vec![
                terminating("10.244.2.5", "node-b"),
                // Terminating but no longer serving: never used.
                ep("10.244.2.6", "node-b", false, false, true),
                // Not ready, not terminating: never used.
                ep("10.244.2.7", "node-b", false, false, false),
            ],
        )],
    );
    let (model, _) = build(&objs, &settings());
    let sp = tcp4(&model, "ns/web");
    assert_eq!(sp.cluster_endpoints, addrs(&["10.244.2.5:8080"]));
    assert!(sp.has_endpoints);

    // With one ready endpoint, terminating ones are not used.
    let objs = objects(
        vec![simple_service("web", "10.96.0.10")],
        vec![simple_slice(
            "web-1",
            "web",
            8080,
            vec![
                terminating("10.244.2.5", "node-b"),
                ready("10.244.3.5", "node-c"),
            ],
        )],
    );
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
    let objs = objects(
        vec![etp_local_nodeport("np")],
        vec![simple_slice(
            "np-1",
            "np",
            8080,
            vec![
                ready("10.244.2.5", "node-b"),
                terminating("10.244.1.5", "node-a"),
                ep("10.244.1.6", "node-a", false, false, true),
            ],
        )],
    );
    let (model, _) = build(&objs, &settings());
    let sp = tcp4(&model, "ns/np");
    assert!(sp.external_policy_local);
    assert_eq!(sp.cluster_endpoints, addrs(&["10.244.2.5:8080"]));
    assert_eq!(sp.local_endpoints, addrs(&["10.244.1.5:8080"]));
    assert!(sp.has_endpoints);

    // Local ready as well: the local list holds only ready ones.
    let objs = objects(
        vec![etp_local_nodeport("np")],
        vec![simple_slice(
            "np-1",
            "np",
            8080,
            vec![
                ready("10.244.1.7", "node-a"),
                terminating("10.244.1.5", "node-a"),
                ready("10.244.2.5", "node-b"),
            ],
        )],
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
    let objs = objects(
        vec![etp_local_nodeport("np")],
        vec![simple_slice(
            "np-1",
            "np",
            8080,
            vec![ready("10.244.2.5", "node-b")],
        )],
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
    let svc = service(json!({"metadata": {"namespace": "ns", "name": "itp"},
        "spec": {"clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local",
                 "ports": [{"port": 80}]}}));
    let eps = vec![ready("10.244.1.5", "node-a"), ready("10.244.2.5", "node-b")];
    let (model, _) = build(
        &objects(vec![svc], vec![simple_slice("itp-1", "itp", 8080, eps)]),
        &settings(),
    );
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
    let svc = service(json!({"metadata": {"namespace": "ns", "name": "itp"},
        "spec": {"clusterIP": "10.96.0.10", "internalTrafficPolicy": "Local",
                 "ports": [{"port": 80}]}}));
    let (model, _) = build(
        &objects(
            vec![svc],
            vec![simple_slice(
                "itp-1",
                "itp",
                8080,
                vec![ready("10.244.2.5", "node-b")],
            )],
        ),
        &settings(),
    );
    let sp = tcp4(&model, "ns/itp");
    assert!(sp.local_endpoints.is_empty() && sp.cluster_endpoints.is_empty());
    assert!(sp.has_endpoints);
}

fn hinted(address: &str, node: &str, zones: &[&str], nodes: &[&str]) -> Value {
    let mut v = ready(address, node);
    let mut hints = serde_json::Map::new();
    if !zones.is_empty() {
        hints.insert(
            "forZones".into(),
            json!(zones.iter().map(|z| json!({"name": z})).collect::<Vec<_>>()),
        );
    }
    if !nodes.is_empty() {
        hints.insert(
            "forNodes".into(),
            json!(nodes.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()),
        );
    }
    v["hints"] = Value::Object(hints);
    v
}

#[test]
fn topology_zone_hints_used() {
    let eps = vec![
        hinted("10.244.1.5", "node-a", &["zone-a"], &[]),
        hinted("10.244.2.5", "node-b", &["zone-b"], &[]),
        hinted("10.244.3.5", "node-c", &["zone-a"], &[]),
    ];
    let svc = service(json!({"metadata": {"namespace": "ns", "name": "topo"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
                 "externalTrafficPolicy": "Local",
                 "ports": [{"port": 80, "nodePort": 30080}]}}));
    let (model, _) = build(
        &objects(vec![svc], vec![simple_slice("topo-1", "topo", 8080, eps)]),
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
        let (model, _) = build(
            &objects(
                vec![simple_service("web", "10.96.0.10")],
                vec![simple_slice("web-1", "web", 8080, eps)],
            ),
            &settings(),
        );
        assert_eq!(
            tcp4(&model, "ns/web").cluster_endpoints,
            addrs(&["10.244.1.5:8080", "10.244.2.5:8080"])
        );
    }
    // Not-ready endpoints without hints do not disable topology.
    let eps = vec![
        hinted("10.244.1.5", "node-a", &["zone-a"], &[]),
        hinted("10.244.2.5", "node-b", &["zone-b"], &[]),
        terminating("10.244.3.5", "node-c"),
    ];
    let (model, _) = build(
        &objects(
            vec![simple_service("web", "10.96.0.10")],
            vec![simple_slice("web-1", "web", 8080, eps)],
        ),
        &settings(),
    );
    assert_eq!(
        tcp4(&model, "ns/web").cluster_endpoints,
        addrs(&["10.244.1.5:8080"])
    );
    // Without a Node object the zone is unknown: hints are not used.
    let mut objs = objects(
        vec![simple_service("web", "10.96.0.10")],
        vec![simple_slice(
            "web-1",
            "web",
            8080,
            vec![
                hinted("10.244.1.5", "node-a", &["zone-a"], &[]),
                hinted("10.244.2.5", "node-b", &["zone-b"], &[]),
            ],
        )],
    );
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
    let (model, _) = build(
        &objects(
            vec![simple_service("web", "10.96.0.10")],
            vec![simple_slice("web-1", "web", 8080, eps)],
        ),
        &settings(),
    );
    assert_eq!(
        tcp4(&model, "ns/web").cluster_endpoints,
        addrs(&["10.244.1.5:8080"])
    );
    // No node hint for us: fall back to zone hints.
    let eps = vec![
        hinted("10.244.1.6", "node-x", &["zone-a"], &["node-x"]),
        hinted("10.244.2.5", "node-b", &["zone-b"], &["node-b"]),
    ];
    let (model, _) = build(
        &objects(
            vec![simple_service("web", "10.96.0.10")],
            vec![simple_slice("web-1", "web", 8080, eps)],
        ),
        &settings(),
    );
    assert_eq!(
        tcp4(&model, "ns/web").cluster_endpoints,
        addrs(&["10.244.1.6:8080"])
    );
}
