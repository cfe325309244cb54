//! EndpointSlices → endpoints: port matching, conditions, ignored slices, bad input.

use k8s_openapi::api::discovery::v1::EndpointPort;

use super::*;

// ---- endpoints ------------------------------------------------------------------

#[test]
fn named_target_ports_matched_by_slice_port_name_and_protocol() {
    let app = svc("ns", "app")
        .cluster_ip("10.96.0.10")
        .port("http", 80, "TCP")
        .target_port_name("web")
        .port("metrics", 9090, "TCP")
        .target_port_name("prom")
        .port("dns", 53, "UDP")
        .build();
    let s = slice("ns", "app-1", "app")
        .port("http", 8080, "TCP")
        .port("metrics", 9100, "TCP")
        // Same name, wrong protocol: does not feed the UDP port.
        .port("dns", 5353, "TCP")
        .endpoint(ready("10.244.1.5", "node-a"))
        .endpoint(ready("10.244.2.6", "node-b"))
        .build();
    let (model, warnings) = build(&objects(vec![app], vec![s]), &settings());
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
    let objs = web(vec![
        fx::ep("10.244.1.5").node("node-a"),
        fx::ep("10.244.1.6").no_conditions(),
    ]);
    let (model, _) = build(&objs, &settings());
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
    let e = fx::ep("10.244.1.5")
        .addresses(&["10.244.1.5", "10.244.1.99"])
        .node("node-b");
    assert_eq!(web_cluster_endpoints(vec![e]), addrs(&["10.244.1.5:8080"]));
}

#[test]
fn ignored_slices_fqdn_headless_other_proxy() {
    let fqdn = slice("ns", "web-fqdn", "web")
        .address_type("FQDN")
        .port("", 8080, "")
        .endpoint("pod.example.com")
        .build();
    let labelled = |name: &str, port: i32, address: &str, label: (&str, &str)| {
        let s = simple_slice(name, "web", port, vec![ready(address, "node-a")]);
        fx::SliceBuilder::from(s).label(label.0, label.1).build()
    };
    let headless = labelled("web-h", 8081, "10.244.1.7", (LABEL_HEADLESS, ""));
    let other = labelled(
        "web-o",
        8082,
        "10.244.1.8",
        (LABEL_SERVICE_PROXY_NAME, "other"),
    );
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
    let services = vec![svc("ns", "web")
        .cluster_ip("10.96.0.10")
        .port("http", 80, "")
        .port("dns", 53, "UDP")
        .build()];
    let slices = vec![
        slice("ns", "web-1", "web")
            .port("http", 8080, "TCP")
            .port("dns", 70000, "UDP")
            .port("dns", 5353, "ICMP")
            // A port without a name (the builder always sets one).
            .with(|s| {
                let unnamed = EndpointPort {
                    port: Some(9999),
                    protocol: Some("TCP".into()),
                    ..EndpointPort::default()
                };
                s.ports.as_mut().unwrap().push(unnamed);
            })
            .endpoint(ready("10.244.1.300", "node-a"))
            .endpoint(fx::ep("").addresses::<&str>(&[]))
            .endpoint(ready("10.244.1.5", "node-a"))
            .build(),
        simple_slice(
            "ghost-1",
            "ghost",
            8080,
            vec![ready("10.244.1.6", "node-a")],
        ),
        // No labels at all (the builder always sets the service-name label).
        slice("ns", "nolabel", "")
            .with(|s| s.metadata.labels = None)
            .build(),
        slice("ns", "weird", "web").address_type("IPX").build(),
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
