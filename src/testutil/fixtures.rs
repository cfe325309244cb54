//! Test fixtures (feature `test-util`): typed builders for the Kubernetes objects kproxy
//! reads (Service, EndpointSlice, Node, ServiceCIDR) and for [`model::ServicePort`].
//!
//! Owns: one way for every test, benchmark and generator to build these objects, so a
//! test reads as the object it means:
//!
//! ```
//! use kproxy::testutil::fixtures::{ep, node, slice, svc};
//! let web = svc("shop", "web")
//!     .type_("NodePort")
//!     .cluster_ip("10.96.0.10")
//!     .port("http", 80, "TCP")
//!     .target_port(8080)
//!     .node_port(30080)
//!     .etp_local()
//!     .build();
//! let eps = slice("shop", "web-abc", "web")
//!     .port("http", 8080, "TCP")
//!     .endpoint(ep("10.244.1.5").node("node-a").ready(true))
//!     .endpoint("10.244.2.5")
//!     .build();
//! let n = node("node-a").pod_cidrs(&["10.244.1.0/24"]).internal_ip("192.168.0.10").build();
//! # let _ = (web, eps, n);
//! ```
//!
//! Each builder produces exactly the fields it was told to set (an unset field stays
//! `None`, as if absent from the YAML), so a fixture equals the object the same YAML or
//! JSON would deserialize to. Ports and endpoints are appended in call order; the
//! per-port setters (`target_port`, `node_port`) change the port added last. Anything
//! rarer goes through `with(|obj| ...)` on the typed object.
//!
//! Must not: be used by the daemon or the CLI; parse YAML (tests of the manifest loader
//! keep their YAML, that is what they test).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeCondition,
    NodeSpec, NodeStatus, ObjectReference, Service, ServicePort as K8sServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig, Taint,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint as K8sEndpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice,
    ForNode, ForZone,
};
use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec, ServiceCIDRStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::model::{
    self, Endpoint, EndpointAddr, Objects, Protocol, ServicePortName, LABEL_SERVICE_NAME,
    LABEL_ZONE,
};

/// `ObjectMeta` with a name and, for namespaced objects, a namespace.
fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        ..ObjectMeta::default()
    }
}

fn strings<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    items.iter().map(|s| s.as_ref().to_string()).collect()
}

/// A Kubernetes timestamp (`2024-01-01T00:00:00Z`).
pub fn time(rfc3339: &str) -> Time {
    Time(rfc3339.parse().expect("an RFC 3339 timestamp"))
}

/// What every object builder has: metadata setters, `with`, `build`, and conversions
/// from the object (to change a few fields of it) and into it.
macro_rules! object_builder {
    ($builder:ident, $obj:ident) => {
        impl From<$obj> for $builder {
            fn from(o: $obj) -> Self {
                $builder(o)
            }
        }
        impl From<$builder> for $obj {
            fn from(b: $builder) -> $obj {
                b.0
            }
        }
        impl $builder {
            /// The object.
            pub fn build(self) -> $obj {
                self.0
            }
            /// `metadata.uid`.
            pub fn uid(mut self, uid: &str) -> Self {
                self.0.metadata.uid = Some(uid.into());
                self
            }
            /// `metadata.resourceVersion`.
            pub fn resource_version(mut self, rv: &str) -> Self {
                self.0.metadata.resource_version = Some(rv.into());
                self
            }
            /// Adds one `metadata.labels` entry.
            pub fn label(mut self, key: &str, value: &str) -> Self {
                let labels = self.0.metadata.labels.get_or_insert_with(BTreeMap::new);
                labels.insert(key.into(), value.into());
                self
            }
            /// Adds these `metadata.labels` entries.
            pub fn labels(self, labels: &[(&str, &str)]) -> Self {
                labels.iter().fold(self, |b, (k, v)| b.label(k, v))
            }
            /// Adds one `metadata.annotations` entry.
            pub fn annotation(mut self, key: &str, value: &str) -> Self {
                let a = self
                    .0
                    .metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new);
                a.insert(key.into(), value.into());
                self
            }
            /// Appends a `metadata.managedFields[]` entry of this manager (nothing else set).
            pub fn managed_field(mut self, manager: &str) -> Self {
                let entry = ManagedFieldsEntry {
                    manager: Some(manager.into()),
                    ..ManagedFieldsEntry::default()
                };
                let m = self.0.metadata.managed_fields.get_or_insert_with(Vec::new);
                m.push(entry);
                self
            }
            /// `metadata.deletionTimestamp` (RFC 3339).
            pub fn deleting(mut self, at: &str) -> Self {
                self.0.metadata.deletion_timestamp = Some(time(at));
                self
            }
            /// Any other change, on the typed object.
            pub fn with(mut self, f: impl FnOnce(&mut $obj)) -> Self {
                f(&mut self.0);
                self
            }
        }
    };
}

// ---------------------------------------------------------------------------------------
// Service

/// A Service `namespace/name` with an empty `spec` (see [`ServiceBuilder`]).
pub fn svc(namespace: &str, name: &str) -> ServiceBuilder {
    ServiceBuilder(Service {
        metadata: meta(Some(namespace), name),
        spec: Some(ServiceSpec::default()),
        status: None,
    })
}

/// Builds a [`Service`]; made by [`svc`].
#[derive(Clone, Debug)]
pub struct ServiceBuilder(Service);

object_builder!(ServiceBuilder, Service);

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(ServiceSpec::default)
    }

    fn last_port(&mut self) -> &mut K8sServicePort {
        self.spec()
            .ports
            .as_mut()
            .and_then(|p| p.last_mut())
            .expect("add a port first")
    }

    /// `spec.type`: ClusterIP, NodePort, LoadBalancer or ExternalName.
    pub fn type_(mut self, t: &str) -> Self {
        self.spec().type_ = Some(t.into());
        self
    }
    /// `spec.clusterIP` (`"None"` for a headless service).
    pub fn cluster_ip(mut self, ip: &str) -> Self {
        self.spec().cluster_ip = Some(ip.into());
        self
    }
    /// `spec.clusterIPs`.
    pub fn cluster_ips<S: AsRef<str>>(mut self, ips: &[S]) -> Self {
        self.spec().cluster_ips = Some(strings(ips));
        self
    }
    /// `spec.ipFamilies` (`"IPv4"`, `"IPv6"`).
    pub fn ip_families<S: AsRef<str>>(mut self, families: &[S]) -> Self {
        self.spec().ip_families = Some(strings(families));
        self
    }
    /// `spec.ipFamilyPolicy`.
    pub fn ip_family_policy(mut self, policy: &str) -> Self {
        self.spec().ip_family_policy = Some(policy.into());
        self
    }
    /// A RequireDualStack service: `clusterIP` `v4`, `clusterIPs` `[v4, v6]`, `ipFamilies`
    /// `[IPv4, IPv6]`.
    pub fn dual_stack(self, v4: &str, v6: &str) -> Self {
        self.cluster_ip(v4)
            .cluster_ips(&[v4, v6])
            .ip_families(&["IPv4", "IPv6"])
            .ip_family_policy("RequireDualStack")
    }
    /// Appends a port `{name, port, protocol}`; an empty `name` leaves the name unset (an
    /// unnamed port, as Kubernetes writes it).
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        let p = K8sServicePort {
            name: (!name.is_empty()).then(|| name.into()),
            port,
            protocol: Some(protocol.into()),
            ..K8sServicePort::default()
        };
        self.spec().ports.get_or_insert_with(Vec::new).push(p);
        self
    }
    /// Appends a port given whole.
    pub fn raw_port(mut self, port: K8sServicePort) -> Self {
        self.spec().ports.get_or_insert_with(Vec::new).push(port);
        self
    }
    /// `targetPort` (a number) of the last port.
    pub fn target_port(mut self, port: i32) -> Self {
        self.last_port().target_port = Some(IntOrString::Int(port));
        self
    }
    /// `targetPort` (a container port's name) of the last port.
    pub fn target_port_name(mut self, name: &str) -> Self {
        self.last_port().target_port = Some(IntOrString::String(name.into()));
        self
    }
    /// `nodePort` of the last port.
    pub fn node_port(mut self, port: i32) -> Self {
        self.last_port().node_port = Some(port);
        self
    }
    /// `spec.externalIPs`.
    pub fn external_ips<S: AsRef<str>>(mut self, ips: &[S]) -> Self {
        self.spec().external_ips = Some(strings(ips));
        self
    }
    /// `spec.externalName` (with type ExternalName).
    pub fn external_name(mut self, name: &str) -> Self {
        self.spec().external_name = Some(name.into());
        self
    }
    /// Appends `status.loadBalancer.ingress[] {ip}`.
    pub fn lb_ingress(self, ip: &str) -> Self {
        self.lb_ingress_with(LoadBalancerIngress {
            ip: Some(ip.into()),
            ..LoadBalancerIngress::default()
        })
    }
    /// `status.loadBalancer.ingress` set to exactly these IPs (present even when empty).
    pub fn lb_ingresses<S: AsRef<str>>(mut self, ips: &[S]) -> Self {
        let status = self.0.status.get_or_insert_with(ServiceStatus::default);
        let lb = status
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default);
        let ingress = ips.iter().map(|ip| LoadBalancerIngress {
            ip: Some(ip.as_ref().into()),
            ..LoadBalancerIngress::default()
        });
        lb.ingress = Some(ingress.collect());
        self
    }
    /// Appends a `status.loadBalancer.ingress[]` entry given whole (ipMode, hostname).
    pub fn lb_ingress_with(mut self, ingress: LoadBalancerIngress) -> Self {
        let status = self.0.status.get_or_insert_with(ServiceStatus::default);
        let lb = status
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default);
        lb.ingress.get_or_insert_with(Vec::new).push(ingress);
        self
    }
    /// `spec.loadBalancerSourceRanges`.
    pub fn source_ranges<S: AsRef<str>>(mut self, cidrs: &[S]) -> Self {
        self.spec().load_balancer_source_ranges = Some(strings(cidrs));
        self
    }
    /// `spec.sessionAffinity` as given (`"ClientIP"`, `"None"`).
    pub fn session_affinity(mut self, affinity: &str) -> Self {
        self.spec().session_affinity = Some(affinity.into());
        self
    }
    /// Session affinity ClientIP, with `sessionAffinityConfig.clientIP.timeoutSeconds`
    /// when `timeout` is given.
    pub fn affinity(mut self, timeout: Option<i32>) -> Self {
        if let Some(t) = timeout {
            self.spec().session_affinity_config = Some(SessionAffinityConfig {
                client_ip: Some(ClientIPConfig {
                    timeout_seconds: Some(t),
                }),
            });
        }
        self.session_affinity("ClientIP")
    }
    /// `spec.externalTrafficPolicy` as given.
    pub fn etp(mut self, policy: &str) -> Self {
        self.spec().external_traffic_policy = Some(policy.into());
        self
    }
    /// externalTrafficPolicy Local.
    pub fn etp_local(self) -> Self {
        self.etp("Local")
    }
    /// `spec.internalTrafficPolicy` as given.
    pub fn itp(mut self, policy: &str) -> Self {
        self.spec().internal_traffic_policy = Some(policy.into());
        self
    }
    /// internalTrafficPolicy Local.
    pub fn itp_local(self) -> Self {
        self.itp("Local")
    }
    /// `spec.healthCheckNodePort`.
    pub fn health_check_node_port(mut self, port: i32) -> Self {
        self.spec().health_check_node_port = Some(port);
        self
    }
    /// `spec.selector`.
    pub fn selector(mut self, labels: &[(&str, &str)]) -> Self {
        let sel = labels.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        self.spec().selector = Some(sel.collect());
        self
    }
}

// ---------------------------------------------------------------------------------------
// EndpointSlice

/// An IPv4 EndpointSlice `namespace/name` labelled as belonging to Service `service`,
/// with no ports and an empty endpoint list (see [`SliceBuilder`]).
pub fn slice(namespace: &str, name: &str, service: &str) -> SliceBuilder {
    SliceBuilder(EndpointSlice {
        metadata: meta(Some(namespace), name),
        address_type: "IPv4".into(),
        endpoints: Some(Vec::new()),
        ports: None,
    })
    .label(LABEL_SERVICE_NAME, service)
}

/// Builds an [`EndpointSlice`]; made by [`slice`].
#[derive(Clone, Debug)]
pub struct SliceBuilder(EndpointSlice);

object_builder!(SliceBuilder, EndpointSlice);

impl SliceBuilder {
    /// `addressType`: IPv4 (the default), IPv6 or FQDN.
    pub fn address_type(mut self, t: &str) -> Self {
        self.0.address_type = t.into();
        self
    }
    /// Appends a port `{name, port, protocol}`. The name is always set, also when empty:
    /// a slice port matches the Service port of the same name, `""` the unnamed one.
    pub fn port(mut self, name: &str, port: i32, protocol: &str) -> Self {
        let p = EndpointPort {
            name: Some(name.into()),
            port: Some(port),
            protocol: Some(protocol.into()),
            ..EndpointPort::default()
        };
        let ports = self.0.ports.get_or_insert_with(Vec::new);
        ports.push(p);
        self
    }
    /// Appends an endpoint: an address (`"10.0.0.1"`) or an [`ep`] builder.
    pub fn endpoint(mut self, e: impl Into<EndpointBuilder>) -> Self {
        let eps = self.0.endpoints.get_or_insert_with(Vec::new);
        eps.push(e.into().build());
        self
    }
    /// Appends these endpoints.
    pub fn endpoints<E: Into<EndpointBuilder>>(self, eps: impl IntoIterator<Item = E>) -> Self {
        eps.into_iter().fold(self, |b, e| b.endpoint(e))
    }
}

/// Endpoint `conditions` with all three set.
pub fn conditions(ready: bool, serving: bool, terminating: bool) -> EndpointConditions {
    EndpointConditions {
        ready: Some(ready),
        serving: Some(serving),
        terminating: Some(terminating),
    }
}

/// One slice endpoint with the single address `address` and nothing else set.
pub fn ep(address: &str) -> EndpointBuilder {
    EndpointBuilder(K8sEndpoint {
        addresses: vec![address.into()],
        ..K8sEndpoint::default()
    })
}

/// Builds one EndpointSlice endpoint; made by [`ep`], or from an address.
#[derive(Clone, Debug)]
pub struct EndpointBuilder(K8sEndpoint);

impl From<&str> for EndpointBuilder {
    fn from(address: &str) -> Self {
        ep(address)
    }
}

impl From<String> for EndpointBuilder {
    fn from(address: String) -> Self {
        ep(&address)
    }
}

impl From<&String> for EndpointBuilder {
    fn from(address: &String) -> Self {
        ep(address)
    }
}

impl EndpointBuilder {
    fn conditions(&mut self) -> &mut EndpointConditions {
        self.0
            .conditions
            .get_or_insert_with(EndpointConditions::default)
    }
    fn hints(&mut self) -> &mut EndpointHints {
        self.0.hints.get_or_insert_with(EndpointHints::default)
    }
    /// Replaces `addresses` (the first one is the one kproxy uses).
    pub fn addresses<S: AsRef<str>>(mut self, addresses: &[S]) -> Self {
        self.0.addresses = strings(addresses);
        self
    }
    /// `nodeName`.
    pub fn node(mut self, node: &str) -> Self {
        self.0.node_name = Some(node.into());
        self
    }
    /// `zone`.
    pub fn zone(mut self, zone: &str) -> Self {
        self.0.zone = Some(zone.into());
        self
    }
    /// `conditions.ready`.
    pub fn ready(mut self, ready: bool) -> Self {
        self.conditions().ready = Some(ready);
        self
    }
    /// `conditions.serving`.
    pub fn serving(mut self, serving: bool) -> Self {
        self.conditions().serving = Some(serving);
        self
    }
    /// `conditions.terminating`.
    pub fn terminating(mut self, terminating: bool) -> Self {
        self.conditions().terminating = Some(terminating);
        self
    }
    /// `targetRef {kind, name}`.
    pub fn target_ref(mut self, kind: &str, name: &str) -> Self {
        self.0.target_ref = Some(ObjectReference {
            kind: Some(kind.into()),
            name: Some(name.into()),
            ..ObjectReference::default()
        });
        self
    }
    /// `conditions` present but empty (`conditions: {}`).
    pub fn no_conditions(mut self) -> Self {
        self.conditions();
        self
    }
    /// `hints.forZones[].name`.
    pub fn zone_hints(mut self, zones: &[&str]) -> Self {
        let z = zones.iter().map(|z| ForZone {
            name: z.to_string(),
        });
        self.hints().for_zones = Some(z.collect());
        self
    }
    /// `hints.forNodes[].name`.
    pub fn node_hints(mut self, nodes: &[&str]) -> Self {
        let n = nodes.iter().map(|n| ForNode {
            name: n.to_string(),
        });
        self.hints().for_nodes = Some(n.collect());
        self
    }
    /// Any other change, on the typed endpoint.
    pub fn with(mut self, f: impl FnOnce(&mut K8sEndpoint)) -> Self {
        f(&mut self.0);
        self
    }
    pub fn build(self) -> K8sEndpoint {
        self.0
    }
}

// ---------------------------------------------------------------------------------------
// Node and ServiceCIDR

/// A Node `name` with no spec and no status (see [`NodeBuilder`]).
pub fn node(name: &str) -> NodeBuilder {
    NodeBuilder(Node {
        metadata: meta(None, name),
        ..Node::default()
    })
}

/// Builds a [`Node`]; made by [`node`].
#[derive(Clone, Debug)]
pub struct NodeBuilder(Node);

object_builder!(NodeBuilder, Node);

impl NodeBuilder {
    fn spec(&mut self) -> &mut NodeSpec {
        self.0.spec.get_or_insert_with(NodeSpec::default)
    }
    fn status(&mut self) -> &mut NodeStatus {
        self.0.status.get_or_insert_with(NodeStatus::default)
    }
    /// `spec.podCIDRs`.
    pub fn pod_cidrs<S: AsRef<str>>(mut self, cidrs: &[S]) -> Self {
        self.spec().pod_cidrs = Some(strings(cidrs));
        self
    }
    /// Appends a `spec.taints[]` entry (`value` `None`: no value).
    pub fn taint(mut self, key: &str, value: Option<&str>, effect: &str) -> Self {
        let t = Taint {
            key: key.into(),
            value: value.map(Into::into),
            effect: effect.into(),
            ..Taint::default()
        };
        self.spec().taints.get_or_insert_with(Vec::new).push(t);
        self
    }
    /// Appends `status.addresses[] {type, address}`.
    pub fn address(mut self, type_: &str, address: &str) -> Self {
        let a = NodeAddress {
            type_: type_.into(),
            address: address.into(),
        };
        self.status().addresses.get_or_insert_with(Vec::new).push(a);
        self
    }
    /// Appends an InternalIP address.
    pub fn internal_ip(self, address: &str) -> Self {
        self.address("InternalIP", address)
    }
    /// The `topology.kubernetes.io/zone` label.
    pub fn zone(self, zone: &str) -> Self {
        self.label(LABEL_ZONE, zone)
    }
    /// Appends a `status.conditions[]` Ready=True with this `lastHeartbeatTime`.
    pub fn ready_heartbeat(mut self, at: &str) -> Self {
        let c = NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_heartbeat_time: Some(time(at)),
            ..NodeCondition::default()
        };
        self.status()
            .conditions
            .get_or_insert_with(Vec::new)
            .push(c);
        self
    }
}

/// A ServiceCIDR `name` with `spec.cidrs` and no status (see [`ServiceCidrBuilder`]).
pub fn service_cidr(name: &str, cidrs: &[&str]) -> ServiceCidrBuilder {
    ServiceCidrBuilder(ServiceCIDR {
        metadata: meta(None, name),
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(strings(cidrs)),
        }),
        status: None,
    })
}

/// Builds a [`ServiceCIDR`]; made by [`service_cidr`].
#[derive(Clone, Debug)]
pub struct ServiceCidrBuilder(ServiceCIDR);

object_builder!(ServiceCidrBuilder, ServiceCIDR);

impl ServiceCidrBuilder {
    /// `status: {conditions: []}`.
    pub fn empty_status(mut self) -> Self {
        self.0.status = Some(ServiceCIDRStatus {
            conditions: Some(Vec::new()),
        });
        self
    }
}

/// `objects` as the multi-document YAML `kproxy render -f` / `apply -f` read: nodes,
/// ServiceCIDRs, Services, then EndpointSlices, each with its `apiVersion` and `kind`.
pub fn manifests(objects: &Objects) -> String {
    fn doc<T: serde::Serialize>(out: &mut Vec<String>, o: &T) {
        out.push(serde_yaml_ng::to_string(o).expect("serializable object"));
    }
    let mut docs = Vec::new();
    objects.nodes.iter().for_each(|o| doc(&mut docs, o));
    objects.service_cidrs.iter().for_each(|o| doc(&mut docs, o));
    objects.services.iter().for_each(|o| doc(&mut docs, o));
    objects.slices.iter().for_each(|o| doc(&mut docs, o));
    docs.join("---\n")
}

// ---------------------------------------------------------------------------------------
// model::ServicePort

/// A model [`model::ServicePort`] `namespace/name:port_name` of `protocol`: ClusterIP
/// `0.0.0.0`, port 0, no node port, nothing external, no affinity, Cluster policies and
/// no endpoints until set (see [`ServicePortBuilder`]).
pub fn service_port(
    namespace: &str,
    name: &str,
    port_name: &str,
    protocol: Protocol,
) -> ServicePortBuilder {
    ServicePortBuilder(model::ServicePort {
        name: ServicePortName {
            namespace: namespace.into(),
            name: name.into(),
            port: port_name.into(),
            protocol,
        },
        cluster_ip: IpAddr::from([0, 0, 0, 0]),
        port: 0,
        node_port: 0,
        external_ips: vec![],
        load_balancer_ips: vec![],
        source_ranges: vec![],
        affinity_timeout: None,
        external_policy_local: false,
        internal_policy_local: false,
        health_check_node_port: 0,
        endpoints: vec![],
        cluster_endpoints: vec![],
        local_endpoints: vec![],
        has_endpoints: false,
    })
}

fn ips(items: &[&str]) -> Vec<IpAddr> {
    items.iter().map(|s| s.parse().expect("an IP")).collect()
}

/// Builds a [`model::ServicePort`]; made by [`service_port`].
#[derive(Clone, Debug)]
pub struct ServicePortBuilder(model::ServicePort);

impl ServicePortBuilder {
    pub fn cluster_ip(mut self, ip: &str) -> Self {
        self.0.cluster_ip = ip.parse().expect("an IP");
        self
    }
    pub fn port(mut self, port: u16) -> Self {
        self.0.port = port;
        self
    }
    pub fn node_port(mut self, port: u16) -> Self {
        self.0.node_port = port;
        self
    }
    pub fn external_ips(mut self, ips_: &[&str]) -> Self {
        self.0.external_ips = ips(ips_);
        self
    }
    pub fn load_balancer_ips(mut self, ips_: &[&str]) -> Self {
        self.0.load_balancer_ips = ips(ips_);
        self
    }
    pub fn source_ranges<S: AsRef<str>>(mut self, cidrs: &[S]) -> Self {
        let parse = |c: &S| c.as_ref().parse::<IpNetwork>().expect("a CIDR");
        self.0.source_ranges = cidrs.iter().map(parse).collect();
        self
    }
    /// ClientIP affinity with this timeout (seconds).
    pub fn affinity(mut self, timeout: u32) -> Self {
        self.0.affinity_timeout = Some(timeout);
        self
    }
    pub fn etp_local(mut self) -> Self {
        self.0.external_policy_local = true;
        self
    }
    pub fn itp_local(mut self) -> Self {
        self.0.internal_policy_local = true;
        self
    }
    pub fn health_check_node_port(mut self, port: u16) -> Self {
        self.0.health_check_node_port = port;
        self
    }
    /// Appends to `endpoints` (keep them sorted: `render` relies on it).
    pub fn endpoint(mut self, e: Endpoint) -> Self {
        self.0.endpoints.push(e);
        self
    }
    /// Appends `ip:port` to `cluster_endpoints` and sets `has_endpoints`.
    pub fn cluster_endpoint(mut self, ip: &str, port: u16) -> Self {
        let ip = ip.parse().expect("an IP");
        self.0.cluster_endpoints.push(EndpointAddr { ip, port });
        self.0.has_endpoints = true;
        self
    }
    /// Appends `ip:port` to `local_endpoints`.
    pub fn local_endpoint(mut self, ip: &str, port: u16) -> Self {
        let ip = ip.parse().expect("an IP");
        self.0.local_endpoints.push(EndpointAddr { ip, port });
        self
    }
    pub fn has_endpoints(mut self, has: bool) -> Self {
        self.0.has_endpoints = has;
        self
    }
    pub fn build(self) -> model::ServicePort {
        self.0
    }
}

impl From<ServicePortBuilder> for model::ServicePort {
    fn from(b: ServicePortBuilder) -> model::ServicePort {
        b.build()
    }
}

#[cfg(test)]
mod tests {
    //! Each builder equals the object the same JSON deserializes to.
    use serde_json::json;

    use super::*;

    fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).expect("valid object")
    }

    #[test]
    fn service_with_every_setter() {
        let built = svc("ns", "web")
            .uid("u-1")
            .resource_version("7")
            .labels(&[("app", "web")])
            .annotation("a", "b")
            .managed_field("m")
            .type_("LoadBalancer")
            .dual_stack("10.0.0.1", "fd00::1")
            .port("http", 80, "TCP")
            .target_port(8080)
            .node_port(30080)
            .port("", 53, "UDP")
            .target_port_name("dns")
            .external_ips(&["1.2.3.4"])
            .lb_ingress("5.6.7.8")
            .source_ranges(&["10.0.0.0/8"])
            .affinity(Some(60))
            .etp_local()
            .itp_local()
            .health_check_node_port(31000)
            .selector(&[("app", "web")])
            .build();
        let want: Service = from(json!({
            "metadata": {"namespace": "ns", "name": "web", "uid": "u-1", "resourceVersion": "7",
                         "labels": {"app": "web"}, "annotations": {"a": "b"},
                         "managedFields": [{"manager": "m"}]},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.1",
                     "clusterIPs": ["10.0.0.1", "fd00::1"], "ipFamilies": ["IPv4", "IPv6"],
                     "ipFamilyPolicy": "RequireDualStack",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
                                "nodePort": 30080},
                               {"port": 53, "protocol": "UDP", "targetPort": "dns"}],
                     "externalIPs": ["1.2.3.4"], "loadBalancerSourceRanges": ["10.0.0.0/8"],
                     "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                     "externalTrafficPolicy": "Local", "internalTrafficPolicy": "Local",
                     "healthCheckNodePort": 31000, "selector": {"app": "web"}},
            "status": {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}]}}
        }));
        assert_eq!(built, want);
    }

    #[test]
    fn minimal_service_sets_only_what_was_asked() {
        let built = svc("ns", "a").cluster_ip("10.0.0.1").build();
        let want: Service = from(json!({"metadata": {"namespace": "ns", "name": "a"},
                                        "spec": {"clusterIP": "10.0.0.1"}}));
        assert_eq!(built, want);
        let ext = svc("ns", "e")
            .type_("ExternalName")
            .external_name("x.example")
            .affinity(None)
            .with(|s| s.metadata.generation = Some(2))
            .build();
        let want: Service = from(json!({
            "metadata": {"namespace": "ns", "name": "e", "generation": 2},
            "spec": {"type": "ExternalName", "externalName": "x.example",
                     "sessionAffinity": "ClientIP"}}));
        assert_eq!(ext, want);
    }

    #[test]
    fn slice_with_endpoints_conditions_and_hints() {
        let built = slice("ns", "web-1", "web")
            .address_type("IPv6")
            .port("", 8080, "TCP")
            .endpoint(ep("fd00::1").target_ref("Pod", "p"))
            .endpoint(
                ep("fd00::2")
                    .node("n1")
                    .zone("z1")
                    .ready(false)
                    .serving(true)
                    .terminating(true)
                    .zone_hints(&["z1"])
                    .node_hints(&["n1"]),
            )
            .endpoint(
                ep("fd00::3")
                    .addresses(&["fd00::3", "fd00::4"])
                    .no_conditions(),
            )
            .build();
        let want: EndpointSlice = from(json!({
            "metadata": {"namespace": "ns", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv6",
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["fd00::1"], "targetRef": {"kind": "Pod", "name": "p"}},
                {"addresses": ["fd00::2"], "nodeName": "n1", "zone": "z1",
                 "conditions": {"ready": false, "serving": true, "terminating": true},
                 "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "n1"}]}},
                {"addresses": ["fd00::3", "fd00::4"], "conditions": {}}
            ]
        }));
        assert_eq!(built, want);
        let empty = slice("ns", "e-1", "e").build();
        let want: EndpointSlice = from(json!({
            "metadata": {"namespace": "ns", "name": "e-1",
                         "labels": {"kubernetes.io/service-name": "e"}},
            "addressType": "IPv4", "endpoints": []}));
        assert_eq!(empty, want);
    }

    #[test]
    fn node_and_service_cidr() {
        let built = node("n1")
            .uid("n-uid")
            .zone("z1")
            .deleting("2024-01-01T00:00:00Z")
            .pod_cidrs(&["10.244.1.0/24", "fd00:244::/64"])
            .taint("t", Some("1"), "NoSchedule")
            .taint("u", None, "NoExecute")
            .internal_ip("192.168.0.1")
            .address("Hostname", "n1")
            .ready_heartbeat("2024-01-01T00:00:10Z")
            .build();
        let want: Node = from(json!({
            "metadata": {"name": "n1", "uid": "n-uid",
                         "labels": {"topology.kubernetes.io/zone": "z1"},
                         "deletionTimestamp": "2024-01-01T00:00:00Z"},
            "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:244::/64"],
                     "taints": [{"key": "t", "value": "1", "effect": "NoSchedule"},
                                {"key": "u", "effect": "NoExecute"}]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"},
                                     {"type": "Hostname", "address": "n1"}],
                       "conditions": [{"type": "Ready", "status": "True",
                                       "lastHeartbeatTime": "2024-01-01T00:00:10Z"}]}
        }));
        assert_eq!(built, want);
        assert_eq!(
            node("n2").build(),
            from(json!({"metadata": {"name": "n2"}}))
        );
        let sc: ServiceCIDR = from(json!({"metadata": {"name": "kubernetes"},
                                          "spec": {"cidrs": ["10.96.0.0/16"]}}));
        assert_eq!(service_cidr("kubernetes", &["10.96.0.0/16"]).build(), sc);
        let sc: ServiceCIDR = from(json!({"metadata": {"name": "k", "resourceVersion": "1"},
                                          "spec": {"cidrs": []}, "status": {"conditions": []}}));
        let built = service_cidr("k", &[]).resource_version("1").empty_status();
        assert_eq!(built.build(), sc);
    }

    #[test]
    fn manifests_load_back_as_the_same_objects() {
        let objects = Objects {
            nodes: vec![node("n1").internal_ip("192.168.0.1").build()],
            service_cidrs: vec![service_cidr("kubernetes", &["10.96.0.0/16"]).build()],
            services: vec![
                svc("ns", "a")
                    .cluster_ip("10.96.0.1")
                    .port("", 80, "TCP")
                    .build(),
                svc("ns", "b")
                    .type_("NodePort")
                    .port("http", 80, "UDP")
                    .node_port(30000)
                    .build(),
            ],
            slices: vec![slice("ns", "a-1", "a")
                .port("", 8080, "TCP")
                .endpoint("10.0.0.1")
                .build()],
        };
        let text = manifests(&objects);
        assert!(text.starts_with("apiVersion: v1\nkind: Node\n"), "{text}");
        let loaded = crate::k8s::manifests::load_str("fixtures.yaml", &text);
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let (got, want) = (&loaded.objects, &objects);
        assert_eq!(
            (&got.nodes, &got.service_cidrs),
            (&want.nodes, &want.service_cidrs)
        );
        assert_eq!((&got.services, &got.slices), (&want.services, &want.slices));
    }

    #[test]
    fn model_service_port() {
        let p = service_port("ns", "dns", "dns", Protocol::Udp)
            .cluster_ip("10.96.0.10")
            .port(53)
            .node_port(30053)
            .external_ips(&["203.0.113.1"])
            .load_balancer_ips(&["203.0.113.2"])
            .source_ranges(&["10.0.0.0/8"])
            .affinity(10800)
            .etp_local()
            .itp_local()
            .health_check_node_port(32000)
            .cluster_endpoint("10.244.1.11", 5353)
            .local_endpoint("10.244.1.11", 5353)
            .build();
        assert_eq!(p.name.to_string(), "ns/dns:dns");
        assert_eq!(
            (p.cluster_ip, p.port, p.node_port),
            (ips(&["10.96.0.10"])[0], 53, 30053)
        );
        assert_eq!(p.external_ips, ips(&["203.0.113.1"]));
        assert_eq!(p.load_balancer_ips, ips(&["203.0.113.2"]));
        assert_eq!(p.source_ranges.len(), 1);
        assert_eq!(p.affinity_timeout, Some(10800));
        assert!(p.external_policy_local && p.internal_policy_local && p.has_endpoints);
        assert_eq!(p.health_check_node_port, 32000);
        assert_eq!(p.cluster_endpoints, p.local_endpoints);
        let bare = service_port("ns", "a", "", Protocol::Tcp).build();
        assert!(!bare.has_endpoints && bare.endpoints.is_empty() && !bare.externally_accessible());
    }
}
