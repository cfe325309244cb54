//! Unit tests of `model::build`: fixtures and the model's shape here, one file per step.

use std::net::{IpAddr, SocketAddr};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use serde_json::{json, Value};

use super::*;
use crate::model::{
    Endpoint, EndpointAddr, LocalDetect, NodePortIps, Protocol, ServicePort,
    DEFAULT_AFFINITY_TIMEOUT, DEFAULT_MASQUERADE_BIT, LABEL_HEADLESS, TAINT_TO_BE_DELETED,
};

mod node;
mod select;
mod services;
mod slices;

// ---- fixtures --------------------------------------------------------------------

fn service(v: Value) -> Service {
    serde_json::from_value(v).expect("Service fixture")
}
fn slice(v: Value) -> EndpointSlice {
    serde_json::from_value(v).expect("EndpointSlice fixture")
}
fn node(v: Value) -> Node {
    serde_json::from_value(v).expect("Node fixture")
}
fn service_cidr(v: Value) -> ServiceCIDR {
    serde_json::from_value(v).expect("ServiceCIDR fixture")
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}
fn addr(s: &str) -> EndpointAddr {
    let sa: SocketAddr = s.parse().unwrap();
    EndpointAddr {
        ip: sa.ip(),
        port: sa.port(),
    }
}
fn addrs(list: &[&str]) -> Vec<EndpointAddr> {
    list.iter().map(|s| addr(s)).collect()
}

/// This node: `node-a` in `zone-a`, dual-stack.
fn node_a() -> Node {
    node(json!({
        "metadata": {"name": "node-a", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:244:0:1::/64"]},
        "status": {"addresses": [
            {"type": "Hostname", "address": "node-a"},
            {"type": "ExternalIP", "address": "203.0.113.10"},
            {"type": "InternalIP", "address": "192.168.0.10"},
            {"type": "InternalIP", "address": "192.168.0.11"},
            {"type": "InternalIP", "address": "fd00::10"},
        ]}
    }))
}

fn settings() -> Settings {
    Settings {
        hostname: "node-a".into(),
        cluster_cidrs: vec![net("10.244.0.0/16"), net("fd00:244::/48")],
        ..Settings::default()
    }
}

/// A ClusterIP service with one unnamed TCP port 80 → 8080.
fn simple_service(name: &str, cluster_ip: &str) -> Service {
    service(json!({
        "metadata": {"namespace": "ns", "name": name},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}
    }))
}

/// An endpoint JSON value: `(address, node, ready, serving, terminating)`.
fn ep(address: &str, node: &str, ready: bool, serving: bool, terminating: bool) -> Value {
    json!({"addresses": [address], "nodeName": node,
           "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
}
fn ready(address: &str, node: &str) -> Value {
    ep(address, node, true, true, false)
}
fn terminating(address: &str, node: &str) -> Value {
    ep(address, node, false, true, true)
}

/// An IPv4 slice for `ns/<service>` with one unnamed TCP port.
fn simple_slice(name: &str, service: &str, port: i32, endpoints: Vec<Value>) -> EndpointSlice {
    slice(json!({
        "metadata": {"namespace": "ns", "name": name,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))
}

fn objects(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Objects {
    Objects {
        services,
        slices,
        nodes: vec![node_a()],
        service_cidrs: Vec::new(),
    }
}

fn family(model: &Model, family: Family) -> &FamilyModel {
    model.family(family).expect("family present")
}

/// The service port printed as `ns/name[:port]` with this protocol, in a family.
fn port<'a>(model: &'a Model, fam: Family, name: &str, protocol: Protocol) -> &'a ServicePort {
    family(model, fam)
        .services
        .iter()
        .find(|sp| sp.name.to_string() == name && sp.name.protocol == protocol)
        .unwrap_or_else(|| panic!("no service port {name} {protocol} in {fam}"))
}
fn tcp4<'a>(model: &'a Model, name: &str) -> &'a ServicePort {
    port(model, Family::V4, name, Protocol::Tcp)
}
fn names(model: &Model, fam: Family) -> Vec<String> {
    family(model, fam)
        .services
        .iter()
        .map(|sp| format!("{}/{}", sp.name, sp.name.protocol))
        .collect()
}
fn has_warning(warnings: &[Warning], object: &str, needle: &str) -> bool {
    warnings
        .iter()
        .any(|w| w.object == object && w.reason.contains(needle))
}
#[track_caller]
fn assert_warning(warnings: &[Warning], object: &str, needle: &str) {
    assert!(
        has_warning(warnings, object, needle),
        "expected warning on {object} containing {needle:?}, got {warnings:#?}"
    );
}

fn etp_local_nodeport(name: &str) -> Service {
    service(json!({"metadata": {"namespace": "ns", "name": name},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
                 "externalTrafficPolicy": "Local",
                 "ports": [{"port": 80, "nodePort": 30080}]}}))
}

// ---- shape ----------------------------------------------------------------------

#[test]
fn both_families_always_present_ipv4_first() {
    let (model, warnings) = build(&Objects::default(), &Settings::default());
    assert_eq!(model.families.len(), 2);
    assert_eq!(model.families[0].settings.family, Family::V4);
    assert_eq!(model.families[1].settings.family, Family::V6);
    assert!(model.families.iter().all(|f| f.services.is_empty()));
    // No Node object → exactly one warning about it.
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].object.starts_with("Node"));
}

#[test]
fn basic_cluster_ip_service() {
    let objs = objects(
        vec![simple_service("web", "10.96.0.10")],
        vec![simple_slice(
            "web-1",
            "web",
            8080,
            vec![ready("10.244.2.5", "node-b"), ready("10.244.1.5", "node-a")],
        )],
    );
    let (model, warnings) = build(&objs, &settings());
    assert!(warnings.is_empty(), "{warnings:?}");
    let sp = tcp4(&model, "ns/web");
    assert_eq!(sp.name.port, "");
    assert_eq!(sp.cluster_ip, ip("10.96.0.10"));
    assert_eq!(sp.port, 80);
    assert_eq!(sp.node_port, 0);
    assert!(sp.external_ips.is_empty() && sp.load_balancer_ips.is_empty());
    assert_eq!(sp.affinity_timeout, None);
    assert!(!sp.external_policy_local && !sp.internal_policy_local);
    assert_eq!(
        sp.endpoints.iter().map(Endpoint::addr).collect::<Vec<_>>(),
        addrs(&["10.244.1.5:8080", "10.244.2.5:8080"])
    );
    let local: Vec<bool> = sp.endpoints.iter().map(|e| e.local).collect();
    assert_eq!(local, vec![true, false]);
    assert_eq!(sp.endpoints[0].node.as_deref(), Some("node-a"));
    assert_eq!(
        sp.cluster_endpoints,
        addrs(&["10.244.1.5:8080", "10.244.2.5:8080"])
    );
    assert!(sp.local_endpoints.is_empty(), "local list unused");
    assert!(sp.has_endpoints);
    assert!(family(&model, Family::V6).services.is_empty());
}

#[test]
fn services_sorted_by_port_name() {
    let multi = service(json!({
        "metadata": {"namespace": "ns", "name": "multi"},
        "spec": {"clusterIP": "10.96.0.20", "ports": [
            {"name": "https", "port": 443, "protocol": "TCP"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        ]}
    }));
    let objs = objects(
        vec![
            simple_service("zeta", "10.96.0.30"),
            multi,
            simple_service("alpha", "10.96.0.40"),
        ],
        vec![],
    );
    let (model, _) = build(&objs, &settings());
    assert_eq!(
        names(&model, Family::V4),
        vec![
            "ns/alpha/tcp",
            "ns/multi:dns/udp",
            "ns/multi:dns-tcp/tcp",
            "ns/multi:https/tcp",
            "ns/zeta/tcp"
        ]
    );
    // Service type defaults to ClusterIP, protocol to TCP.
    let (model, _) = build(
        &objects(
            vec![service(
                json!({"metadata": {"namespace": "ns", "name": "d"},
                "spec": {"clusterIP": "10.96.0.50", "ports": [{"port": 81}]}}),
            )],
            vec![],
        ),
        &settings(),
    );
    assert_eq!(tcp4(&model, "ns/d").port, 81);
}

// ---- determinism ----------------------------------------------------------------

#[test]
fn result_does_not_depend_on_object_order() {
    let services = vec![
        simple_service("a", "10.96.0.1"),
        etp_local_nodeport("np"),
        service(json!({"metadata": {"namespace": "ns", "name": "ds"},
            "spec": {"clusterIPs": ["10.96.0.3", "fd00:96::3"], "clusterIP": "10.96.0.3",
                     "externalIPs": ["2001:db8::1", "198.51.100.1", "bogus"],
                     "ports": [{"name": "x", "port": 1}, {"name": "y", "port": 2}]}})),
    ];
    let slices = vec![
        simple_slice("a-1", "a", 8080, vec![ready("10.244.1.1", "node-a")]),
        simple_slice(
            "a-2",
            "a",
            8080,
            vec![
                terminating("10.244.1.1", "node-a"),
                ready("10.244.2.1", "node-b"),
            ],
        ),
        simple_slice(
            "np-1",
            "np",
            8080,
            vec![
                terminating("10.244.1.2", "node-a"),
                ready("10.244.2.2", "node-b"),
            ],
        ),
        simple_slice("ghost-1", "ghost", 1, vec![]),
        slice(json!({"metadata": {"namespace": "ns", "name": "ds-6",
                "labels": {"kubernetes.io/service-name": "ds"}},
            "addressType": "IPv6",
            "ports": [{"name": "x", "port": 81}, {"name": "y", "port": 82}],
            "endpoints": [ready("fd00::2", "node-b"), ready("fd00::1", "node-a")]})),
    ];
    let nodes = vec![node(json!({"metadata": {"name": "node-b"}})), node_a()];
    let forward = Objects {
        services: services.clone(),
        slices: slices.clone(),
        nodes: nodes.clone(),
        service_cidrs: vec![],
    };
    let mut reversed = forward.clone();
    reversed.services.reverse();
    reversed.slices.reverse();
    reversed.nodes.reverse();
    let mut rotated = forward.clone();
    rotated.services.rotate_left(1);
    rotated.slices.rotate_left(2);

    let (m1, w1) = build(&forward, &settings());
    let (m2, w2) = build(&reversed, &settings());
    let (m3, w3) = build(&rotated, &settings());
    assert_eq!(m1, m2);
    assert_eq!(m1, m3);
    assert_eq!(w1, w2);
    assert_eq!(w1, w3);
    // And the outcome is the expected one.
    assert_eq!(
        tcp4(&m1, "ns/a").cluster_endpoints,
        addrs(&["10.244.1.1:8080", "10.244.2.1:8080"])
    );
    assert!(tcp4(&m1, "ns/a").endpoints.iter().all(|e| !e.terminating));
    assert_eq!(
        tcp4(&m1, "ns/np").local_endpoints,
        addrs(&["10.244.1.2:8080"])
    );
    assert_eq!(
        port(&m1, Family::V6, "ns/ds:y", Protocol::Tcp).cluster_endpoints,
        addrs(&["[fd00::1]:82", "[fd00::2]:82"])
    );
    let mut sorted = w1.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(w1, sorted, "warnings sorted and deduplicated");
    assert_eq!(w1.len(), 2, "{w1:#?}");
}
