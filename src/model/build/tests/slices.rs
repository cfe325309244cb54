//! EndpointSlices → endpoints: port matching, conditions, ignored slices, bad input.

use super::*;

// ---- endpoints ------------------------------------------------------------------

#[test]
fn named_target_ports_matched_by_slice_port_name_and_protocol() {
    let svc = service(json!({
        "metadata": {"namespace": "ns", "name": "app"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [
            {"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"},
            {"name": "metrics", "port": 9090, "targetPort": "prom", "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
        ]}
    }));
    let s = slice(json!({
        "metadata": {"namespace": "ns", "name": "app-1",
                     "labels": {"kubernetes.io/service-name": "app"}},
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "metrics", "port": 9100, "protocol": "TCP"},
            // Same name, wrong protocol: does not feed the UDP port.
            {"name": "dns", "port": 5353, "protocol": "TCP"},
        ],
        "endpoints": [ready("10.244.1.5", "node-a"), ready("10.244.2.6", "node-b")],
    }));
    let (model, warnings) = build(&objects(vec![svc], vec![s]), &settings());
    assert_eq!(
        tcp4(&model, "ns/app:http").cluster_endpoints,
        addrs(&["10.244.1.5:8080", "10.244.2.6:8080"])
    );
    assert_eq!(
        tcp4(&model, "ns/app:metrics").cluster_endpoints,
        addrs(&["10.244.1.5:9100", "10.244.2.6:9100"])
    );
    let dns = port(&model, Family::V4, "ns/app:dns", Protocol::Udp);
    assert!(dns.endpoints.is_empty() && !dns.has_endpoints);
    assert_warning(&warnings, "EndpointSlice ns/app-1", "matches no port");
}

#[test]
fn conditions_default_when_unset() {
    let s = simple_slice(
        "web-1",
        "web",
        8080,
        vec![
            json!({"addresses": ["10.244.1.5"], "nodeName": "node-a"}),
            json!({"addresses": ["10.244.1.6"], "conditions": {}}),
        ],
    );
    let (model, _) = build(
        &objects(vec![simple_service("web", "10.96.0.10")], vec![s]),
        &settings(),
    );
    let sp = tcp4(&model, "ns/web");
    for e in &sp.endpoints {
        assert!(e.ready && e.serving && !e.terminating, "{e:?}");
    }
    assert_eq!(sp.endpoints[1].node, None);
    assert!(!sp.endpoints[1].local);
    assert_eq!(
        sp.cluster_endpoints,
        addrs(&["10.244.1.5:8080", "10.244.1.6:8080"])
    );
}

#[test]
fn only_first_address_of_an_endpoint_is_used() {
    let s = simple_slice(
        "web-1",
        "web",
        8080,
        vec![json!({"addresses": ["10.244.1.5", "10.244.1.99"], "nodeName": "node-b"})],
    );
    let (model, _) = build(
        &objects(vec![simple_service("web", "10.96.0.10")], vec![s]),
        &settings(),
    );
    assert_eq!(
        tcp4(&model, "ns/web").cluster_endpoints,
        addrs(&["10.244.1.5:8080"])
    );
}

#[test]
fn ignored_slices_fqdn_headless_other_proxy() {
    let fqdn = slice(json!({
        "metadata": {"namespace": "ns", "name": "web-fqdn",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "FQDN",
        "ports": [{"name": "", "port": 8080}],
        "endpoints": [{"addresses": ["pod.example.com"]}],
    }));
    let mut headless = simple_slice("web-h", "web", 8081, vec![ready("10.244.1.7", "node-a")]);
    headless
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_HEADLESS.into(), "".into());
    let mut other = simple_slice("web-o", "web", 8082, vec![ready("10.244.1.8", "node-a")]);
    other
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(LABEL_SERVICE_PROXY_NAME.into(), "other".into());
    // A slice of the wrong family for its addresses: each bad endpoint is dropped.
    let mixed = simple_slice(
        "web-m",
        "web",
        8080,
        vec![ready("fd00::5", "node-a"), ready("10.244.1.9", "node-a")],
    );
    let (model, warnings) = build(
        &objects(
            vec![simple_service("web", "10.96.0.10")],
            vec![fqdn, headless, other, mixed],
        ),
        &settings(),
    );
    assert_eq!(
        tcp4(&model, "ns/web").cluster_endpoints,
        addrs(&["10.244.1.9:8080"])
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_warning(
        &warnings,
        "EndpointSlice ns/web-m",
        "is not an IPv4 address",
    );
}

#[test]
fn same_endpoint_in_two_slices_counts_once_preferring_non_terminating() {
    let a = simple_slice(
        "web-a",
        "web",
        8080,
        vec![terminating("10.244.1.5", "node-a")],
    );
    let b = simple_slice(
        "web-b",
        "web",
        8080,
        vec![ready("10.244.1.5", "node-a"), ready("10.244.2.5", "node-b")],
    );
    let c = simple_slice("web-c", "web", 8080, vec![ready("10.244.2.5", "node-b")]);
    let (model, _) = build(
        &objects(vec![simple_service("web", "10.96.0.10")], vec![a, b, c]),
        &settings(),
    );
    let sp = tcp4(&model, "ns/web");
    assert_eq!(sp.endpoints.len(), 2);
    assert!(sp.endpoints[0].ready && !sp.endpoints[0].terminating);
    assert_eq!(
        sp.cluster_endpoints,
        addrs(&["10.244.1.5:8080", "10.244.2.5:8080"])
    );
}

#[test]
fn no_endpoints() {
    let objs = objects(
        vec![
            simple_service("empty", "10.96.0.10"),
            simple_service("noslice", "10.96.0.11"),
        ],
        vec![simple_slice("empty-1", "empty", 8080, vec![])],
    );
    let (model, _) = build(&objs, &settings());
    for name in ["ns/empty", "ns/noslice"] {
        let sp = tcp4(&model, name);
        assert!(sp.endpoints.is_empty());
        assert!(sp.cluster_endpoints.is_empty());
        assert!(sp.local_endpoints.is_empty());
        assert!(!sp.has_endpoints);
    }
    // Only not-ready, not-serving endpoints: nothing usable either.
    let objs = objects(
        vec![simple_service("dead", "10.96.0.12")],
        vec![simple_slice(
            "dead-1",
            "dead",
            8080,
            vec![ep("10.244.1.5", "node-a", false, false, false)],
        )],
    );
    let (model, _) = build(&objs, &settings());
    let sp = tcp4(&model, "ns/dead");
    assert_eq!(sp.endpoints.len(), 1);
    assert!(sp.cluster_endpoints.is_empty() && !sp.has_endpoints);
}

#[test]
fn bad_slices_warn_and_other_endpoints_still_build() {
    let services = vec![service(
        json!({"metadata": {"namespace": "ns", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [
                {"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}),
    )];
    let slices = vec![
        slice(json!({
            "metadata": {"namespace": "ns", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 70000, "protocol": "UDP"},
                {"name": "dns", "port": 5353, "protocol": "ICMP"},
                {"port": 9999, "protocol": "TCP"},
            ],
            "endpoints": [
                ready("10.244.1.300", "node-a"),
                {"addresses": []},
                ready("10.244.1.5", "node-a"),
            ],
        })),
        simple_slice(
            "ghost-1",
            "ghost",
            8080,
            vec![ready("10.244.1.6", "node-a")],
        ),
        slice(json!({"metadata": {"namespace": "ns", "name": "nolabel"},
            "addressType": "IPv4", "endpoints": []})),
        slice(json!({"metadata": {"namespace": "ns", "name": "weird",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPX", "endpoints": []})),
    ];
    let (model, warnings) = build(&objects(services, slices), &settings());
    let obj = "EndpointSlice ns/web-1";
    assert_warning(
        &warnings,
        obj,
        "endpoints[0].addresses[0] \"10.244.1.300\" is not an IP address",
    );
    assert_warning(&warnings, obj, "endpoints[1] has no addresses");
    assert_warning(&warnings, obj, "ports[1].port 70000 is outside 1..65535");
    assert_warning(
        &warnings,
        obj,
        "ports[2].protocol \"ICMP\" is not TCP, UDP or SCTP",
    );
    assert_warning(&warnings, obj, "ports[3] has no name");
    assert_warning(&warnings, "EndpointSlice ns/ghost-1", "Service ns/ghost");
    assert_warning(
        &warnings,
        "EndpointSlice ns/nolabel",
        "has no kubernetes.io/service-name label",
    );
    assert_warning(&warnings, "EndpointSlice ns/weird", "addressType \"IPX\"");
    assert_eq!(warnings.len(), 8, "{warnings:#?}");

    assert_eq!(
        tcp4(&model, "ns/web:http").cluster_endpoints,
        addrs(&["10.244.1.5:8080"])
    );
    assert!(port(&model, Family::V4, "ns/web:dns", Protocol::Udp)
        .endpoints
        .is_empty());
}
