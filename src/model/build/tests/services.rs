//! Services → service ports: which Services count, their fields, bad input.

use k8s_openapi::api::core::v1::{LoadBalancerIngress, SessionAffinityConfig};

use super::*;

/// A `status.loadBalancer.ingress[]` entry with these of `ip`, `ipMode`, `hostname`.
fn lb_ingress(
    ip: Option<&str>,
    ip_mode: Option<&str>,
    hostname: Option<&str>,
) -> LoadBalancerIngress {
    LoadBalancerIngress {
        ip: ip.map(Into::into),
        ip_mode: ip_mode.map(Into::into),
        hostname: hostname.map(Into::into),
        ..LoadBalancerIngress::default()
    }
}

// ---- which services count -------------------------------------------------------

#[test]
fn skipped_services() {
    let labelled = |name: &str, cluster_ip: &str, proxy: &str| {
        fx::ServiceBuilder::from(simple_service(name, cluster_ip))
            .label(LABEL_SERVICE_PROXY_NAME, proxy)
            .build()
    };
    let services = vec![
        svc("ns", "ext")
            .type_("ExternalName")
            .external_name("example.com")
            .cluster_ip("10.96.1.3")
            .port("", 80, "")
            .build(),
        svc("ns", "headless")
            .cluster_ip("None")
            .cluster_ips(&["None"])
            .port("", 80, "")
            .build(),
        svc("ns", "noip").port("", 80, "").build(),
        labelled("other-proxy", "10.96.1.1", "someone-else"),
        labelled("our-proxy", "10.96.1.2", "kproxy"),
        simple_service("plain", "10.96.1.4"),
    ];
    // Slices of skipped services are ignored without warnings.
    let slices = vec![
        simple_slice(
            "headless-1",
            "headless",
            80,
            vec![ready("10.244.1.9", "node-a")],
        ),
        simple_slice("ext-1", "ext", 80, vec![ready("10.244.1.9", "node-a")]),
    ];
    let objs = objects(services, slices);

    let (model, warnings) = build(&objs, &settings());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(names(&model, Family::V4), vec!["ns/plain/tcp"]);

    let ours = Settings {
        service_proxy_name: Some("kproxy".into()),
        ..settings()
    };
    let (model, _) = build(&objs, &ours);
    assert_eq!(
        names(&model, Family::V4),
        vec!["ns/our-proxy/tcp", "ns/plain/tcp"]
    );
}

#[test]
fn dual_stack_service_split_by_family() {
    let ds = svc("ns", "ds")
        .type_("LoadBalancer")
        .cluster_ip("10.96.0.10")
        .cluster_ips(&["10.96.0.10", "fd00:96::10"])
        .ip_families(&["IPv4", "IPv6"])
        .port("http", 80, "TCP")
        .node_port(30080)
        .external_ips(&["198.51.100.7", "2001:db8::7", "198.51.100.6"])
        .source_ranges(&[" 192.0.2.0/24", "2001:db8:1::/48 ", "192.0.2.128/25"])
        .lb_ingress("203.0.113.50")
        .lb_ingress_with(lb_ingress(Some("2001:db8:2::50"), Some("VIP"), None))
        .build();
    let v4 = slice("ns", "ds-v4", "ds")
        .port("http", 8080, "TCP")
        .endpoint(ready("10.244.1.5", "node-a"))
        .build();
    let v6 = slice("ns", "ds-v6", "ds")
        .address_type("IPv6")
        .port("http", 8080, "TCP")
        .endpoint(ready("fd00:244:0:1::5", "node-a"))
        .build();
    let (model, warnings) = build(&objects(vec![ds], vec![v4, v6]), &settings());
    assert!(warnings.is_empty(), "{warnings:?}");

    let a = port(&model, Family::V4, "ns/ds:http", Protocol::Tcp);
    assert_eq!(a.cluster_ip, ip("10.96.0.10"));
    assert_eq!(a.node_port, 30080);
    assert_eq!(a.external_ips, vec![ip("198.51.100.6"), ip("198.51.100.7")]);
    assert_eq!(a.load_balancer_ips, vec![ip("203.0.113.50")]);
    assert_eq!(
        a.source_ranges,
        vec![net("192.0.2.0/24"), net("192.0.2.128/25")]
    );
    assert_eq!(a.cluster_endpoints, addrs(&["10.244.1.5:8080"]));

    let b = port(&model, Family::V6, "ns/ds:http", Protocol::Tcp);
    assert_eq!(b.cluster_ip, ip("fd00:96::10"));
    assert_eq!(b.node_port, 30080);
    assert_eq!(b.external_ips, vec![ip("2001:db8::7")]);
    assert_eq!(b.load_balancer_ips, vec![ip("2001:db8:2::50")]);
    assert_eq!(b.source_ranges, vec![net("2001:db8:1::/48")]);
    assert_eq!(b.cluster_endpoints, addrs(&["[fd00:244:0:1::5]:8080"]));
    assert_eq!(b.endpoints.len(), 1);
}

#[test]
fn single_stack_ipv6_service_and_cluster_ip_fallback() {
    // Only spec.clusterIP (no clusterIPs): still used, in its own family only.
    let v6 = svc("ns", "v6")
        .cluster_ip("fd00:96::20")
        .port("", 443, "")
        .build();
    let (model, _) = build(&objects(vec![v6], vec![]), &settings());
    assert!(family(&model, Family::V4).services.is_empty());
    assert_eq!(
        port(&model, Family::V6, "ns/v6", Protocol::Tcp).cluster_ip,
        ip("fd00:96::20")
    );
}

#[test]
fn load_balancer_ingress_ip_mode_proxy_and_hostname_skipped() {
    let lb = svc("ns", "lb")
        .type_("LoadBalancer")
        .cluster_ip("10.96.0.10")
        .port("", 80, "")
        .node_port(30080)
        .lb_ingress_with(lb_ingress(Some("203.0.113.1"), Some("Proxy"), None))
        .lb_ingress_with(lb_ingress(None, None, Some("lb.example.com")))
        .lb_ingress_with(lb_ingress(Some("203.0.113.2"), Some("VIP"), None))
        .lb_ingress("203.0.113.3")
        .build();
    let (model, warnings) = build(&objects(vec![lb], vec![]), &settings());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        tcp4(&model, "ns/lb").load_balancer_ips,
        vec![ip("203.0.113.2"), ip("203.0.113.3")]
    );
}

#[test]
fn session_affinity() {
    let mk = |name: &str, cluster_ip: &str| svc("ns", name).cluster_ip(cluster_ip);
    let services = vec![
        mk("default-timeout", "10.96.0.1")
            .session_affinity("ClientIP")
            // `sessionAffinityConfig: {}` (no clientIP): `affinity(None)` leaves it out.
            .with(|s| {
                let config = SessionAffinityConfig::default();
                s.spec.as_mut().unwrap().session_affinity_config = Some(config);
            })
            .port("", 80, "")
            .build(),
        mk("explicit", "10.96.0.1")
            .affinity(Some(60))
            .port("", 80, "")
            .build(),
        mk("none", "10.96.0.2")
            .session_affinity("None")
            .port("", 80, "")
            .build(),
    ];
    let (model, _) = build(&objects(services, vec![]), &settings());
    assert_eq!(
        tcp4(&model, "ns/default-timeout").affinity_timeout,
        Some(DEFAULT_AFFINITY_TIMEOUT)
    );
    assert_eq!(tcp4(&model, "ns/explicit").affinity_timeout, Some(60));
    assert_eq!(tcp4(&model, "ns/none").affinity_timeout, None);
}

#[test]
fn traffic_policies_and_health_check_node_port() {
    let mk = |name: &str, type_: &str| {
        svc("ns", name)
            .type_(type_)
            .cluster_ip("10.96.0.1")
            .etp_local()
            .health_check_node_port(32000)
            .port("", 80, "")
    };
    let services = vec![
        mk("cip", "ClusterIP").build(),
        mk("cip-ext", "ClusterIP")
            .external_ips(&["198.51.100.1"])
            .build(),
        mk("np", "NodePort").node_port(30001).build(),
        mk("lb", "LoadBalancer").node_port(30002).build(),
        mk("lb-cluster", "LoadBalancer").etp("Cluster").build(),
        mk("itp", "ClusterIP").itp_local().build(),
    ];
    let (model, _) = build(&objects(services, vec![]), &settings());
    let etp = |n: &str| tcp4(&model, n).external_policy_local;
    let hc = |n: &str| tcp4(&model, n).health_check_node_port;
    assert!(
        !etp("ns/cip"),
        "ClusterIP without externalIPs is not external"
    );
    assert!(
        etp("ns/cip-ext"),
        "ClusterIP with externalIPs is externally accessible"
    );
    assert!(etp("ns/np"));
    assert!(etp("ns/lb"));
    assert!(!etp("ns/lb-cluster"));
    assert_eq!(hc("ns/lb"), 32000);
    assert_eq!(hc("ns/np"), 0, "health check port only for LoadBalancer");
    assert_eq!(hc("ns/cip-ext"), 0);
    assert_eq!(hc("ns/lb-cluster"), 0);
    assert!(tcp4(&model, "ns/itp").internal_policy_local);
    assert!(!tcp4(&model, "ns/cip").internal_policy_local);
}

// ---- bad input ------------------------------------------------------------------

#[test]
fn bad_service_fields_warn_and_skip_only_that_piece() {
    let services = vec![
        svc("ns", "bad-cip")
            .cluster_ip("10.96.0.300")
            .port("", 80, "")
            .build(),
        svc("ns", "bad-bits")
            .type_("LoadBalancer")
            .cluster_ip("10.96.0.11")
            .external_ips(&["198.51.100.1", "10.0.0.300"])
            .source_ranges(&["192.0.2.0/24", "192.0.2.0/33", "192.0.2.1"])
            .port("ok", 80, "")
            .node_port(30080)
            .port("zero", 0, "")
            .port("huge", 70000, "")
            .port("badnp", 81, "")
            .node_port(70000)
            .port("http", 82, "HTTP")
            .port("ok", 83, "")
            .port("dup-num", 80, "TCP")
            .port("udp-80", 80, "UDP")
            .lb_ingress("lb.example")
            .lb_ingress("203.0.113.9")
            .build(),
        simple_service("good", "10.96.0.12"),
    ];
    let (model, warnings) = build(&objects(services, vec![]), &settings());
    let obj = "Service ns/bad-bits";
    assert_warning(
        &warnings,
        "Service ns/bad-cip",
        "spec.clusterIP \"10.96.0.300\" is not an IP address",
    );
    assert_warning(
        &warnings,
        obj,
        "spec.externalIPs[1] \"10.0.0.300\" is not an IP address",
    );
    assert_warning(
        &warnings,
        obj,
        "spec.loadBalancerSourceRanges[1] \"192.0.2.0/33\" is not a CIDR",
    );
    assert_warning(
        &warnings,
        obj,
        "spec.loadBalancerSourceRanges[2] \"192.0.2.1\" is not a CIDR",
    );
    assert_warning(&warnings, obj, "spec.ports[1].port 0 is outside 1..65535");
    assert_warning(
        &warnings,
        obj,
        "spec.ports[2].port 70000 is outside 1..65535",
    );
    assert_warning(
        &warnings,
        obj,
        "spec.ports[3].nodePort 70000 is outside 1..65535",
    );
    assert_warning(
        &warnings,
        obj,
        "spec.ports[4].protocol \"HTTP\" is not TCP, UDP or SCTP",
    );
    assert_warning(&warnings, obj, "spec.ports[5]: duplicate port name \"ok\"");
    assert_warning(&warnings, obj, "spec.ports[6]: duplicate port 80/TCP");
    assert_warning(
        &warnings,
        obj,
        "status.loadBalancer.ingress[0].ip \"lb.example\" is not an IP address",
    );
    assert_eq!(warnings.len(), 11, "{warnings:#?}");

    assert_eq!(
        names(&model, Family::V4),
        vec![
            "ns/bad-bits:badnp/tcp",
            "ns/bad-bits:ok/tcp",
            "ns/bad-bits:udp-80/udp",
            "ns/good/tcp"
        ]
    );
    let ok = tcp4(&model, "ns/bad-bits:ok");
    assert_eq!(ok.port, 80);
    assert_eq!(ok.node_port, 30080);
    assert_eq!(ok.external_ips, vec![ip("198.51.100.1")]);
    assert_eq!(ok.load_balancer_ips, vec![ip("203.0.113.9")]);
    assert_eq!(ok.source_ranges, vec![net("192.0.2.0/24")]);
    assert_eq!(tcp4(&model, "ns/bad-bits:badnp").node_port, 0);
}

/// Regression (tests/bad_input.rs): a Service without ports was skipped without a word.
#[test]
fn service_without_ports_is_warned_of() {
    let services = vec![
        svc("ns", "none").cluster_ip("10.96.0.20").build(),
        svc("ns", "empty")
            .cluster_ip("10.96.0.21")
            .with(|s| s.spec.as_mut().unwrap().ports = Some(Vec::new()))
            .build(),
    ];
    let (model, warnings) = build(&objects(services, vec![]), &settings());
    for obj in ["Service ns/none", "Service ns/empty"] {
        assert_warning(
            &warnings,
            obj,
            "spec.ports is empty: no rules for this Service",
        );
    }
    assert!(family(&model, Family::V4).services.is_empty());
}

/// Regression (tests/bad_input.rs): names the API server refuses (manifests only) went
/// into chain names as they were: `nft -f` of the render failed on them, and a NUL byte
/// cut the name the kernel kept.
#[test]
fn invalid_names_are_warned_of_and_skipped() {
    let named = |ns: &str, name: &str, ip: &str| {
        svc(ns, name).cluster_ip(ip).port("http", 80, "TCP").build()
    };
    let services = vec![
        named("ns", "UPPER", "10.96.0.30"),
        named("ns", "1digit", "10.96.0.31"),
        named("ns", &"a".repeat(64), "10.96.0.32"),
        named("ns", "nul\u{0}byte", "10.96.0.33"),
        named("ünï", "web", "10.96.0.34"),
        named("ns", "ok", "10.96.0.35"),
        svc("ns", "port")
            .cluster_ip("10.96.0.36")
            .port("Bad Port", 80, "TCP")
            .port("fine", 81, "TCP")
            .build(),
    ];
    let slices = vec![slice("ns", "Bad_Slice", "ok")
        .port("http", 8080, "TCP")
        .endpoint(ready("10.244.1.5", "node-a"))
        .build()];
    let (model, warnings) = build(&objects(services, slices), &settings());
    for obj in ["UPPER", "1digit", &"a".repeat(64), "nul\u{0}byte"] {
        assert_warning(
            &warnings,
            &format!("Service ns/{obj}"),
            "is not a valid Service name",
        );
    }
    assert_warning(&warnings, "Service ünï/web", "is not a valid namespace");
    assert_warning(
        &warnings,
        "EndpointSlice ns/Bad_Slice",
        "is not a valid EndpointSlice name",
    );
    assert_warning(
        &warnings,
        "Service ns/port",
        "spec.ports[0].name \"Bad Port\" is not a valid port name",
    );
    assert_eq!(
        names(&model, Family::V4),
        vec!["ns/ok:http/tcp", "ns/port:fine/tcp"]
    );
}

/// Regression (tests/bad_input.rs): values the API server would refuse in enum-like
/// fields were read as the default without a word.
#[test]
fn unknown_enum_values_are_warned_of() {
    let services = vec![svc("ns", "odd")
        .type_("LoadBalancer")
        .cluster_ip("10.96.0.40")
        .port("http", 80, "TCP")
        .session_affinity("Sticky")
        .etp("Global")
        .itp("local")
        .lb_ingress_with(lb_ingress(Some("203.0.113.40"), Some("Bogus"), None))
        .lb_ingress_with(lb_ingress(Some("203.0.113.41"), Some("Proxy"), None))
        .lb_ingress_with(lb_ingress(Some("203.0.113.42"), Some("VIP"), None))
        .build()];
    let (model, warnings) = build(&objects(services, vec![]), &settings());
    let obj = "Service ns/odd";
    assert_warning(
        &warnings,
        obj,
        "spec.sessionAffinity \"Sticky\" is not ClientIP or None",
    );
    assert_warning(
        &warnings,
        obj,
        "spec.externalTrafficPolicy \"Global\" is not Cluster or Local",
    );
    assert_warning(
        &warnings,
        obj,
        "spec.internalTrafficPolicy \"local\" is not Cluster or Local",
    );
    assert_warning(
        &warnings,
        obj,
        "ingress[0].ipMode \"Bogus\" is not VIP or Proxy",
    );
    assert_eq!(warnings.len(), 4, "{warnings:#?}");
    let sp = tcp4(&model, "ns/odd:http");
    assert_eq!(sp.affinity_timeout, None);
    assert!(!sp.external_policy_local && !sp.internal_policy_local);
    assert_eq!(sp.load_balancer_ips, vec![ip("203.0.113.42")]);
}

/// Regression (tests/bad_input.rs, absurd counts): a list of more endpoints than the
/// rules' 65536 picks silently lost the rest in `render`; the model now keeps the first
/// 65536 and says so.
#[test]
fn more_endpoints_than_a_list_can_use_are_warned_of() {
    const N: usize = 65_536 + 10;
    let eps: Vec<EndpointBuilder> = (0..N)
        .map(|i| {
            ready(
                &format!("10.{}.{}.{}", 100 + i / 65_536, i / 256 % 256, i % 256),
                "node-b",
            )
        })
        .collect();
    let (model, warnings) = build(&web(eps), &settings());
    assert_warning(
        &warnings,
        "Service ns/web",
        "ns/web has 65546 Cluster-policy endpoints, more than the 65536 one port can use",
    );
    let sp = tcp4(&model, "ns/web");
    assert_eq!(sp.cluster_endpoints.len(), 65_536);
    assert_eq!(sp.endpoints.len(), N);
}

#[test]
fn duplicate_objects_are_reported_and_resolved_deterministically() {
    let a = simple_service("web", "10.96.0.10");
    let b = simple_service("web", "10.96.0.99");
    let (m1, w1) = build(&objects(vec![a.clone(), b.clone()], vec![]), &settings());
    let (m2, w2) = build(&objects(vec![b, a], vec![]), &settings());
    assert_eq!(m1, m2);
    assert_eq!(w1, w2);
    assert_warning(&w1, "Service ns/web", "2 Service objects have this name");
    assert_eq!(family(&m1, Family::V4).services.len(), 1);
}
