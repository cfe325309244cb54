//! Compact, pruned forms of the watched objects, as the informer cache stores them.
//!
//! Owns: what the cache keeps of each Service and EndpointSlice, and the conversion back
//! to the `k8s-openapi` types [`model::build`](crate::model::build) reads. Only the fields
//! `model::build` (and `model::NodeFacts`) read survive; everything else (managed
//! fields, annotations, selectors, target refs, every address of an endpoint but the first,
//! ...) is dropped on arrival. Two objects that build the same model therefore compare
//! equal, which is how the cache tells a real change from noise.
//!
//! Why not keep pruned `k8s-openapi` values: their structs are wide (`EndpointSlice`
//! 432 bytes, each `Endpoint` 352 bytes inline before any heap string), so a 10-endpoint
//! slice costs ~5 KB even pruned; measured with the cache's indexes (`tests/k8s_cache.rs`
//! `memory_per_object`): ~1.05 KB per 10-endpoint slice, ~0.6 KB per Service. Strings that repeat across
//! objects (namespaces, node and zone names, protocols, policies) are interned as
//! `Arc<str>` ([`Interner`]).
//!
//! Node and ServiceCIDR objects are few, so they stay `k8s-openapi` values, pruned in
//! place ([`prune_node`], [`prune_service_cidr`]).
//!
//! Must not: validate or interpret (an invalid value is kept verbatim so `model::build`
//! can warn about it).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeSpec, NodeStatus, Service,
    ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig, Taint,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::{
    LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, LABEL_ZONE, TAINT_TO_BE_DELETED,
};
use crate::nft::Family;
use crate::sync::Families;

type Str = Box<str>;
type Atom = Arc<str>;

/// Shares repeated strings. Entries nobody else holds are dropped by [`Interner::gc`].
#[derive(Default, Debug)]
pub struct Interner {
    set: HashSet<Atom>,
    last_gc_len: usize,
}

impl Interner {
    pub fn atom(&mut self, s: &str) -> Atom {
        if let Some(a) = self.set.get(s) {
            return a.clone();
        }
        let a: Atom = Arc::from(s);
        self.set.insert(a.clone());
        if self.set.len() > 2 * self.last_gc_len.max(1024) {
            self.gc();
        }
        a
    }

    /// Forgets strings no stored object uses any more.
    pub fn gc(&mut self) {
        self.set.retain(|a| Arc::strong_count(a) > 1);
        self.last_gc_len = self.set.len();
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

fn boxed(s: Option<String>) -> Option<Str> {
    s.map(String::into_boxed_str)
}

fn unboxed(s: &Option<Str>) -> Option<String> {
    s.as_deref().map(str::to_string)
}

fn atom(i: &mut Interner, s: Option<String>) -> Option<Atom> {
    s.map(|s| i.atom(&s))
}

fn unatom(s: &Option<Atom>) -> Option<String> {
    s.as_deref().map(str::to_string)
}

fn list(v: Option<Vec<String>>) -> Option<Box<[Str]>> {
    v.map(|v| v.into_iter().map(String::into_boxed_str).collect())
}

fn unlist(v: &Option<Box<[Str]>>) -> Option<Vec<String>> {
    v.as_ref()
        .map(|v| v.iter().map(|s| s.to_string()).collect())
}

fn take_label(meta: &mut ObjectMeta, key: &str) -> Option<String> {
    meta.labels.as_mut().and_then(|l| l.remove(key))
}

fn labels(pairs: &[(&str, &Option<Str>)]) -> Option<BTreeMap<String, String>> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k.to_string(), v.to_string())))
        .collect();
    (!map.is_empty()).then_some(map)
}

// ---------------------------------------------------------------------------------------
// Service
// ---------------------------------------------------------------------------------------

/// A Service, reduced to what `model::build` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLite {
    pub namespace: Atom,
    pub name: Str,
    pub uid: Option<Str>,
    /// Label `service.kubernetes.io/service-proxy-name`.
    proxy_name: Option<Str>,
    spec: Option<Box<SpecLite>>,
    ingress: Box<[IngressLite]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SpecLite {
    type_: Option<Atom>,
    cluster_ip: Option<Str>,
    cluster_ips: Option<Box<[Str]>>,
    ports: Option<Box<[SvcPortLite]>>,
    external_ips: Option<Box<[Str]>>,
    source_ranges: Option<Box<[Str]>>,
    session_affinity: Option<Atom>,
    /// `sessionAffinityConfig.clientIP.timeoutSeconds` (the only part read).
    affinity_timeout: Option<i32>,
    external_traffic_policy: Option<Atom>,
    internal_traffic_policy: Option<Atom>,
    health_check_node_port: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SvcPortLite {
    name: Option<Atom>,
    protocol: Option<Atom>,
    port: i32,
    node_port: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct IngressLite {
    ip: Option<Str>,
    ip_mode: Option<Atom>,
}

impl ServiceLite {
    pub fn from_k8s(svc: Service, i: &mut Interner) -> ServiceLite {
        let Service {
            mut metadata,
            spec,
            status,
        } = svc;
        let spec = spec.map(|s| {
            Box::new(SpecLite {
                type_: atom(i, s.type_),
                cluster_ip: boxed(s.cluster_ip),
                cluster_ips: list(s.cluster_ips),
                ports: s.ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|p| SvcPortLite {
                            name: atom(i, p.name),
                            protocol: atom(i, p.protocol),
                            port: p.port,
                            node_port: p.node_port,
                        })
                        .collect()
                }),
                external_ips: list(s.external_ips),
                source_ranges: list(s.load_balancer_source_ranges),
                session_affinity: atom(i, s.session_affinity),
                affinity_timeout: s
                    .session_affinity_config
                    .and_then(|c| c.client_ip)
                    .and_then(|c| c.timeout_seconds),
                external_traffic_policy: atom(i, s.external_traffic_policy),
                internal_traffic_policy: atom(i, s.internal_traffic_policy),
                health_check_node_port: s.health_check_node_port,
            })
        });
        let ingress = status
            .and_then(|s| s.load_balancer)
            .and_then(|lb| lb.ingress)
            .unwrap_or_default()
            .into_iter()
            .map(|ing| IngressLite {
                ip: boxed(ing.ip),
                ip_mode: atom(i, ing.ip_mode),
            })
            .collect();
        ServiceLite {
            namespace: i.atom(metadata.namespace.as_deref().unwrap_or("")),
            name: metadata.name.take().unwrap_or_default().into_boxed_str(),
            uid: boxed(metadata.uid.take()),
            proxy_name: boxed(take_label(&mut metadata, LABEL_SERVICE_PROXY_NAME)),
            spec,
            ingress,
        }
    }

    /// The families of the ClusterIPs (`spec.clusterIPs`, else `spec.clusterIP`): the
    /// per-family proxiers upstream's change trackers hand this Service to (none for an
    /// ExternalName or headless Service, as upstream's `ShouldSkipService`).
    pub fn families(&self) -> Families {
        let Some(spec) = self.spec.as_deref() else {
            return Families::NONE;
        };
        let primary = spec.cluster_ip.as_deref().unwrap_or("");
        if spec.type_.as_deref() == Some("ExternalName") || primary.is_empty() || primary == "None"
        {
            return Families::NONE;
        }
        let ips = match spec.cluster_ips.as_deref() {
            Some(ips) if !ips.is_empty() => ips.iter().map(|ip| &**ip).collect::<Vec<&str>>(),
            _ => vec![primary],
        };
        ips.into_iter()
            .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
            .map(|ip| Family::of(&ip))
            .collect()
    }

    /// `spec.clusterIP: None`: upstream's Service informer never sees it (field selector
    /// `spec.clusterIP!=None`).
    pub fn headless(&self) -> bool {
        self.spec
            .as_deref()
            .is_some_and(|s| s.cluster_ip.as_deref() == Some("None"))
    }

    pub fn to_k8s(&self) -> Service {
        let spec = self.spec.as_ref().map(|s| ServiceSpec {
            type_: unatom(&s.type_),
            cluster_ip: unboxed(&s.cluster_ip),
            cluster_ips: unlist(&s.cluster_ips),
            ports: s.ports.as_ref().map(|ports| {
                ports
                    .iter()
                    .map(|p| ServicePort {
                        name: unatom(&p.name),
                        protocol: unatom(&p.protocol),
                        port: p.port,
                        node_port: p.node_port,
                        ..ServicePort::default()
                    })
                    .collect()
            }),
            external_ips: unlist(&s.external_ips),
            load_balancer_source_ranges: unlist(&s.source_ranges),
            session_affinity: unatom(&s.session_affinity),
            session_affinity_config: s.affinity_timeout.map(|t| SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(t),
                }),
            }),
            external_traffic_policy: unatom(&s.external_traffic_policy),
            internal_traffic_policy: unatom(&s.internal_traffic_policy),
            health_check_node_port: s.health_check_node_port,
            ..ServiceSpec::default()
        });
        let status = (!self.ingress.is_empty()).then(|| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(
                    self.ingress
                        .iter()
                        .map(|ing| LoadBalancerIngress {
                            ip: unboxed(&ing.ip),
                            ip_mode: unatom(&ing.ip_mode),
                            ..LoadBalancerIngress::default()
                        })
                        .collect(),
                ),
            }),
            ..ServiceStatus::default()
        });
        Service {
            metadata: ObjectMeta {
                namespace: Some(self.namespace.to_string()),
                name: Some(self.name.to_string()),
                uid: unboxed(&self.uid),
                labels: labels(&[(LABEL_SERVICE_PROXY_NAME, &self.proxy_name)]),
                ..ObjectMeta::default()
            },
            spec,
            status,
        }
    }
}

// ---------------------------------------------------------------------------------------
// EndpointSlice
// ---------------------------------------------------------------------------------------

/// An EndpointSlice, reduced to what `model::build` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceLite {
    pub namespace: Atom,
    pub name: Str,
    pub uid: Option<Str>,
    /// Label `kubernetes.io/service-name` (the Service it belongs to).
    pub service_name: Option<Str>,
    /// Label `service.kubernetes.io/headless`.
    headless: Option<Str>,
    /// Label `service.kubernetes.io/service-proxy-name`.
    proxy_name: Option<Str>,
    pub address_type: Atom,
    ports: Option<Box<[SlicePortLite]>>,
    endpoints: Option<Box<[EndpointLite]>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct SlicePortLite {
    name: Option<Atom>,
    protocol: Option<Atom>,
    port: Option<i32>,
}

/// One endpoint: only its first address is kept (upstream and `model::build` read no
/// other); absent conditions are the same as conditions with every field unset.
#[derive(Clone, Debug, PartialEq, Eq)]
struct EndpointLite {
    address: Option<Str>,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    node_name: Option<Atom>,
    hints: Option<Box<HintsLite>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct HintsLite {
    zones: Option<Box<[Atom]>>,
    nodes: Option<Box<[Atom]>>,
}

impl SliceLite {
    /// The family of the address type (`None` for FQDN or anything else).
    pub fn family(&self) -> Option<Family> {
        address_family(&self.address_type)
    }

    pub fn from_k8s(slice: EndpointSlice, i: &mut Interner) -> SliceLite {
        let EndpointSlice {
            address_type,
            endpoints,
            mut metadata,
            ports,
        } = slice;
        let ports = ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| SlicePortLite {
                    name: atom(i, p.name),
                    protocol: atom(i, p.protocol),
                    port: p.port,
                })
                .collect()
        });
        let endpoints = endpoints.map(|eps| {
            eps.into_iter()
                .map(|ep| {
                    let c = ep.conditions.unwrap_or_default();
                    let hints = ep.hints.and_then(|h| {
                        let zones: Option<Box<[Atom]>> = h
                            .for_zones
                            .map(|z| z.into_iter().map(|z| i.atom(&z.name)).collect());
                        let nodes: Option<Box<[Atom]>> = h
                            .for_nodes
                            .map(|n| n.into_iter().map(|n| i.atom(&n.name)).collect());
                        (zones.is_some() || nodes.is_some())
                            .then(|| Box::new(HintsLite { zones, nodes }))
                    });
                    EndpointLite {
                        address: ep.addresses.into_iter().next().map(String::into_boxed_str),
                        ready: c.ready,
                        serving: c.serving,
                        terminating: c.terminating,
                        node_name: atom(i, ep.node_name),
                        hints,
                    }
                })
                .collect()
        });
        SliceLite {
            namespace: i.atom(metadata.namespace.as_deref().unwrap_or("")),
            name: metadata.name.take().unwrap_or_default().into_boxed_str(),
            uid: boxed(metadata.uid.take()),
            service_name: boxed(take_label(&mut metadata, LABEL_SERVICE_NAME)),
            headless: boxed(take_label(&mut metadata, LABEL_HEADLESS)),
            proxy_name: boxed(take_label(&mut metadata, LABEL_SERVICE_PROXY_NAME)),
            address_type: i.atom(&address_type),
            ports,
            endpoints,
        }
    }

    pub fn to_k8s(&self) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some(self.namespace.to_string()),
                name: Some(self.name.to_string()),
                uid: unboxed(&self.uid),
                labels: labels(&[
                    (LABEL_SERVICE_NAME, &self.service_name),
                    (LABEL_HEADLESS, &self.headless),
                    (LABEL_SERVICE_PROXY_NAME, &self.proxy_name),
                ]),
                ..ObjectMeta::default()
            },
            address_type: self.address_type.to_string(),
            ports: self.ports.as_ref().map(|ports| {
                ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: unatom(&p.name),
                        protocol: unatom(&p.protocol),
                        port: p.port,
                        ..EndpointPort::default()
                    })
                    .collect()
            }),
            endpoints: self.endpoints.as_ref().map(|eps| {
                eps.iter()
                    .map(|ep| Endpoint {
                        addresses: ep.address.iter().map(|a| a.to_string()).collect(),
                        conditions: Some(EndpointConditions {
                            ready: ep.ready,
                            serving: ep.serving,
                            terminating: ep.terminating,
                        }),
                        node_name: unatom(&ep.node_name),
                        hints: ep.hints.as_ref().map(|h| EndpointHints {
                            for_zones: h.zones.as_ref().map(|z| {
                                z.iter()
                                    .map(|z| ForZone {
                                        name: z.to_string(),
                                    })
                                    .collect()
                            }),
                            for_nodes: h.nodes.as_ref().map(|n| {
                                n.iter()
                                    .map(|n| ForNode {
                                        name: n.to_string(),
                                    })
                                    .collect()
                            }),
                        }),
                        ..Endpoint::default()
                    })
                    .collect()
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Node and ServiceCIDR: pruned in place
// ---------------------------------------------------------------------------------------

/// Keeps the Node's name, uid, deletion timestamp, zone label, pod CIDRs, the
/// cluster-autoscaler deletion taint and its addresses (all of them, in order: a warning
/// about `status.addresses[i]` must count the entries the object has). Heartbeats,
/// conditions, images and capacity are dropped, so status churn is not a change.
pub fn prune_node(node: Node) -> Node {
    let Node {
        mut metadata,
        spec,
        status,
    } = node;
    let zone = take_label(&mut metadata, LABEL_ZONE);
    let spec = spec.map(|s| NodeSpec {
        pod_cidr: s.pod_cidr,
        pod_cidrs: s.pod_cidrs,
        taints: s.taints.and_then(|t| {
            let kept: Vec<Taint> = t
                .into_iter()
                .filter(|t| t.key == TAINT_TO_BE_DELETED)
                .map(|t| Taint {
                    key: t.key,
                    effect: t.effect,
                    ..Taint::default()
                })
                .collect();
            (!kept.is_empty()).then_some(kept)
        }),
        ..NodeSpec::default()
    });
    let status = status.map(|s| NodeStatus {
        addresses: s.addresses,
        ..NodeStatus::default()
    });
    Node {
        metadata: ObjectMeta {
            name: metadata.name,
            uid: metadata.uid,
            deletion_timestamp: metadata.deletion_timestamp,
            labels: zone.map(|z| BTreeMap::from([(LABEL_ZONE.to_string(), z)])),
            ..ObjectMeta::default()
        },
        spec,
        status,
    }
}

/// Keeps a ServiceCIDR's name, uid and `spec.cidrs`.
pub fn prune_service_cidr(sc: ServiceCIDR) -> ServiceCIDR {
    ServiceCIDR {
        metadata: ObjectMeta {
            name: sc.metadata.name,
            uid: sc.metadata.uid,
            ..ObjectMeta::default()
        },
        spec: sc.spec.map(|s| ServiceCIDRSpec { cidrs: s.cidrs }),
        status: None,
    }
}

/// The family of an EndpointSlice `addressType` (`IPv4`, `IPv6`; `None` for FQDN, the one
/// type upstream's proxiers do not take).
pub fn address_family(address_type: &str) -> Option<Family> {
    match address_type {
        "IPv4" => Some(Family::V4),
        "IPv6" => Some(Family::V6),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::fixtures::{ep, node, slice, svc};
    use k8s_openapi::api::core::v1::{ContainerImage, LoadBalancerIngress, ObjectReference};

    #[test]
    fn service_round_trip_keeps_what_build_reads_and_drops_the_rest() {
        let kept = |b: crate::testutil::fixtures::ServiceBuilder| {
            b.type_("LoadBalancer")
                .cluster_ip("10.0.0.1")
                .cluster_ips(&["10.0.0.1"])
                .external_ips(&["1.2.3.4"])
                .source_ranges(&["10.0.0.0/8"])
                .affinity(Some(60))
                .etp_local()
                .itp("Cluster")
                .health_check_node_port(31000)
        };
        let full = kept(svc("ns", "web").uid("u-1").resource_version("7"))
            .labels(&[
                ("app", "web"),
                ("service.kubernetes.io/service-proxy-name", "x"),
            ])
            .annotation("kubectl.kubernetes.io/last-applied-configuration", "{...}")
            .managed_field("kubectl")
            .with(|s| {
                s.metadata.managed_fields.as_mut().unwrap()[0].operation = Some("Apply".into())
            })
            .selector(&[("app", "web")])
            .ip_families(&["IPv4"])
            .port("http", 80, "TCP")
            .target_port(8080)
            .node_port(30080)
            .lb_ingress_with(LoadBalancerIngress {
                ip: Some("5.6.7.8".into()),
                ip_mode: Some("VIP".into()),
                hostname: Some("lb.example".into()),
                ..LoadBalancerIngress::default()
            })
            .build();
        let mut i = Interner::default();
        let back = ServiceLite::from_k8s(full, &mut i).to_k8s();
        let expected = kept(svc("ns", "web").uid("u-1"))
            .label("service.kubernetes.io/service-proxy-name", "x")
            .port("http", 80, "TCP")
            .node_port(30080)
            .lb_ingress_with(LoadBalancerIngress {
                ip: Some("5.6.7.8".into()),
                ip_mode: Some("VIP".into()),
                ..LoadBalancerIngress::default()
            })
            .build();
        assert_eq!(back, expected);
    }

    #[test]
    fn slice_round_trip_keeps_first_address_conditions_hints() {
        let endpoint = ep("10.1.0.1")
            .node("n1")
            .ready(true)
            .serving(true)
            .terminating(false)
            .zone_hints(&["z1"]);
        let full = slice("ns", "web-abc", "web")
            .uid("s-1")
            .label("endpointslice.kubernetes.io/managed-by", "x")
            .annotation(
                "endpoints.kubernetes.io/last-change-trigger-time",
                "2024-01-01T00:00:00Z",
            )
            .port("http", 8080, "TCP")
            .with(|s| s.ports.as_mut().unwrap()[0].app_protocol = Some("http".into()))
            .endpoint(
                endpoint
                    .clone()
                    .addresses(&["10.1.0.1", "10.1.0.9"])
                    .zone("z1")
                    .with(|e| {
                        e.target_ref = Some(ObjectReference {
                            kind: Some("Pod".into()),
                            name: Some("p".into()),
                            namespace: Some("ns".into()),
                            uid: Some("x".into()),
                            ..ObjectReference::default()
                        })
                    }),
            )
            .endpoint(ep("").with(|e| e.addresses.clear()))
            .build();
        let mut i = Interner::default();
        let lite = SliceLite::from_k8s(full, &mut i);
        assert_eq!(lite.service_name.as_deref(), Some("web"));
        let back = lite.to_k8s();
        let expected = slice("ns", "web-abc", "web")
            .uid("s-1")
            .port("http", 8080, "TCP")
            .endpoint(endpoint)
            .endpoint(ep("").with(|e| e.addresses.clear()).no_conditions())
            .build();
        assert_eq!(back, expected);
    }

    #[test]
    fn node_pruning_drops_status_churn() {
        let node_at = |heartbeat: &str| -> Node {
            node("n1")
                .uid("n-1")
                .resource_version(heartbeat)
                .labels(&[
                    ("topology.kubernetes.io/zone", "z1"),
                    ("kubernetes.io/os", "linux"),
                ])
                .pod_cidrs(&["10.244.1.0/24"])
                .taint("ToBeDeletedByClusterAutoscaler", Some("123"), "NoSchedule")
                .taint("other", None, "NoSchedule")
                .internal_ip("192.168.0.1")
                .address("Hostname", "n1")
                .ready_heartbeat(heartbeat)
                .with(|n| {
                    n.status.as_mut().unwrap().images = Some(vec![ContainerImage {
                        names: Some(vec!["a".into()]),
                        size_bytes: Some(1),
                    }])
                })
                .build()
        };
        let a = prune_node(node_at("2024-01-01T00:00:00Z"));
        let b = prune_node(node_at("2024-01-01T00:00:10Z"));
        assert_eq!(a, b);
        let expected = node("n1")
            .uid("n-1")
            .zone("z1")
            .pod_cidrs(&["10.244.1.0/24"])
            .taint("ToBeDeletedByClusterAutoscaler", None, "NoSchedule")
            .internal_ip("192.168.0.1")
            .address("Hostname", "n1")
            .build();
        assert_eq!(a, expected);
    }

    /// Regression (tests/bad_input.rs): pruning dropped the non-IP addresses, so a warning
    /// about a bad address named the wrong index of the object.
    #[test]
    fn node_pruning_keeps_address_indexes() {
        let n = node("n1")
            .address("Hostname", "n1")
            .internal_ip("192.168.0.1")
            .address("InternalIP", "not-an-ip")
            .build();
        let raw = crate::model::NodeFacts::read(std::slice::from_ref(&n), "n1");
        let pruned = crate::model::NodeFacts::read(&[prune_node(n)], "n1");
        assert_eq!(pruned, raw);
        assert!(
            raw.1[0].reason.contains("status.addresses[2]"),
            "{:?}",
            raw.1
        );
    }

    #[test]
    fn interner_shares_and_collects() {
        let mut i = Interner::default();
        let a = i.atom("ns");
        let b = i.atom("ns");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        i.atom("other");
        i.gc();
        assert!(i.is_empty());
    }
}
