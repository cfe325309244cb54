//! Services → service ports: which Services count, their fields, bad input.

use super::*;

// ---- which services count -------------------------------------------------------

#[test]
fn skipped_services() {
    let mut labelled_other = simple_service("other-proxy", "10.96.1.1");
    labelled_other.metadata.labels = Some(
        [(
            LABEL_SERVICE_PROXY_NAME.to_string(),
            "someone-else".to_string(),
        )]
        .into(),
    );
    let mut labelled_ours = simple_service("our-proxy", "10.96.1.2");
    labelled_ours.metadata.labels =
        Some([(LABEL_SERVICE_PROXY_NAME.to_string(), "kproxy".to_string())].into());
    let services = vec![
        service(json!({"metadata": {"namespace": "ns", "name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.com",
                     "clusterIP": "10.96.1.3", "ports": [{"port": 80}]}})),
        service(json!({"metadata": {"namespace": "ns", "name": "headless"},
            "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]}})),
        service(json!({"metadata": {"namespace": "ns", "name": "noip"},
            "spec": {"ports": [{"port": 80}]}})),
        labelled_other,
        labelled_ours,
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
    let svc = service(json!({
        "metadata": {"namespace": "ns", "name": "ds"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"}],
            "externalIPs": ["198.51.100.7", "2001:db8::7", "198.51.100.6"],
            "loadBalancerSourceRanges": [" 192.0.2.0/24", "2001:db8:1::/48 ", "192.0.2.128/25"],
        },
        "status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.50"}, {"ip": "2001:db8:2::50", "ipMode": "VIP"}
        ]}}
    }));
    let v4 = slice(json!({
        "metadata": {"namespace": "ns", "name": "ds-v4",
                     "labels": {"kubernetes.io/service-name": "ds"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [ready("10.244.1.5", "node-a")],
    }));
    let v6 = slice(json!({
        "metadata": {"namespace": "ns", "name": "ds-v6",
                     "labels": {"kubernetes.io/service-name": "ds"}},
        "addressType": "IPv6",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [ready("fd00:244:0:1::5", "node-a")],
    }));
    let (model, warnings) = build(&objects(vec![svc], vec![v4, v6]), &settings());
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
    let svc = service(json!({"metadata": {"namespace": "ns", "name": "v6"},
        "spec": {"clusterIP": "fd00:96::20", "ports": [{"port": 443}]}}));
    let (model, _) = build(&objects(vec![svc], vec![]), &settings());
    assert!(family(&model, Family::V4).services.is_empty());
    assert_eq!(
        port(&model, Family::V6, "ns/v6", Protocol::Tcp).cluster_ip,
        ip("fd00:96::20")
    );
}

#[test]
fn load_balancer_ingress_ip_mode_proxy_and_hostname_skipped() {
    let svc = service(json!({
        "metadata": {"namespace": "ns", "name": "lb"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                 "ports": [{"port": 80, "nodePort": 30080}]},
        "status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.1", "ipMode": "Proxy"},
            {"hostname": "lb.example.com"},
            {"ip": "203.0.113.2", "ipMode": "VIP"},
            {"ip": "203.0.113.3"},
        ]}}
    }));
    let (model, warnings) = build(&objects(vec![svc], vec![]), &settings());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        tcp4(&model, "ns/lb").load_balancer_ips,
        vec![ip("203.0.113.2"), ip("203.0.113.3")]
    );
}

#[test]
fn session_affinity() {
    let mk = |name: &str, cfg: Value| {
        service(json!({"metadata": {"namespace": "ns", "name": name},
            "spec": {"clusterIP": "10.96.0.1", "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": cfg, "ports": [{"port": 80}]}}))
    };
    let services = vec![
        mk("default-timeout", json!({})),
        mk("explicit", json!({"clientIP": {"timeoutSeconds": 60}})),
        service(json!({"metadata": {"namespace": "ns", "name": "none"},
            "spec": {"clusterIP": "10.96.0.2", "sessionAffinity": "None",
                     "ports": [{"port": 80}]}})),
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
    let mk = |name: &str, type_: &str, extra: Value| {
        let mut spec = json!({"type": type_, "clusterIP": "10.96.0.1",
            "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
            "ports": [{"port": 80}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        service(json!({"metadata": {"namespace": "ns", "name": name}, "spec": spec}))
    };
    let services = vec![
        mk("cip", "ClusterIP", json!({})),
        mk(
            "cip-ext",
            "ClusterIP",
            json!({"externalIPs": ["198.51.100.1"]}),
        ),
        mk(
            "np",
            "NodePort",
            json!({"ports": [{"port": 80, "nodePort": 30001}]}),
        ),
        mk(
            "lb",
            "LoadBalancer",
            json!({"ports": [{"port": 80, "nodePort": 30002}]}),
        ),
        mk(
            "lb-cluster",
            "LoadBalancer",
            json!({"externalTrafficPolicy": "Cluster"}),
        ),
        mk(
            "itp",
            "ClusterIP",
            json!({"internalTrafficPolicy": "Local"}),
        ),
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
        service(json!({"metadata": {"namespace": "ns", "name": "bad-cip"},
            "spec": {"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}})),
        service(json!({"metadata": {"namespace": "ns", "name": "bad-bits"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.11",
                "externalIPs": ["198.51.100.1", "10.0.0.300"],
                "loadBalancerSourceRanges": ["192.0.2.0/24", "192.0.2.0/33", "192.0.2.1"],
                "ports": [
                    {"name": "ok", "port": 80, "nodePort": 30080},
                    {"name": "zero", "port": 0},
                    {"name": "huge", "port": 70000},
                    {"name": "badnp", "port": 81, "nodePort": 70000},
                    {"name": "http", "port": 82, "protocol": "HTTP"},
                    {"name": "ok", "port": 83},
                    {"name": "dup-num", "port": 80, "protocol": "TCP"},
                    {"name": "udp-80", "port": 80, "protocol": "UDP"},
                ]},
            "status": {"loadBalancer": {"ingress": [{"ip": "lb.example"}, {"ip": "203.0.113.9"}]}}})),
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
