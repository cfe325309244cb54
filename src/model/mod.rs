//! The proxy model: what every service port should do on this node, per IP family.
//!
//! Owns: the typed, validated picture that `render` turns into rules. [`build`] derives it
//! from Kubernetes objects (Services, EndpointSlices, the own Node, ServiceCIDRs) and the
//! proxy configuration, applying upstream kube-proxy's selection rules (which objects count,
//! endpoint conditions, traffic policies, topology, terminating fallback). Each family's
//! model is its node-level [`FamilySettings`] (what the table skeleton needs) and its
//! [`ServicePort`]s; [`NodeFacts`] is the one reading of the own Node object.
//!
//! Must not: do I/O, read clocks, or know anything about nftables syntax. Bad input is
//! never an error here: it becomes a [`Warning`] naming the object and the reason, and the
//! rest of the model is still built.

pub mod build;

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::Serialize;

pub use crate::nft::{Family, Protocol};
pub use build::{build, NodeFacts, Objects};

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// Default masquerade mark bit (`--masquerade-bit` / `nftables.masqueradeBit`).
pub const DEFAULT_MASQUERADE_BIT: u8 = 14;
/// Label that hands a Service to another proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label set on EndpointSlices of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label joining an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Node label carrying the zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The only Node taint kproxy reads: the node is leaving (cluster autoscaler).
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// How kproxy recognises traffic from pods on this node ("local traffic detector").
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", content = "value")]
pub enum LocalDetect {
    /// No detector: ClusterIP traffic is never masqueraded (unless masqueradeAll) and pods
    /// lose the eTP Local short-circuit.
    None,
    /// Sources inside these CIDRs are pods (ClusterCIDR and NodeCIDR modes).
    SourceCidrs(Vec<IpNetwork>),
    /// Packets arriving on this interface are from pods (BridgeInterface mode).
    Interface(String),
    /// Packets arriving on interfaces with this prefix are from pods (InterfaceNamePrefix).
    InterfacePrefix(String),
}

impl LocalDetect {
    pub fn is_implemented(&self) -> bool {
        !matches!(self, LocalDetect::None)
    }
}

/// Which destination addresses accept NodePort traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum NodePortIps {
    /// Every local address except loopback (`fib daddr type local`): nodePortAddresses
    /// given as CIDRs covering everything (`0.0.0.0/0`, `::/0`).
    All,
    /// Exactly these addresses (the primary node IP by default, or the local IPs inside
    /// the configured CIDRs). Empty means NodePorts are not served in this family.
    Ips(Vec<IpAddr>),
}

/// The identity of a Service: `namespace/name`. What the cache records as changed and the
/// renderer re-renders: every port of the service at once.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl ServiceKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> ServiceKey {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The smallest [`ServicePortName`] of this service: where a range over port names
    /// sorted by (namespace, name, …) starts.
    pub fn first_port(&self) -> ServicePortName {
        ServicePortName {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            port: String::new(),
            protocol: Protocol::Tcp,
        }
    }

    /// Whether `port` is a port of this service.
    pub fn owns(&self, port: &ServicePortName) -> bool {
        port.namespace == self.namespace && port.name == self.name
    }
}

impl fmt::Display for ServiceKey {
    /// `namespace/name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The identity of a service port: `namespace/name:port` (port name, may be empty) and
/// protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// The port's name (`spec.ports[].name`), empty for a single unnamed port.
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    /// `namespace/name:port` as kube-proxy prints it (`namespace/name` for unnamed ports).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}/{}", self.namespace, self.name)
        } else {
            write!(f, "{}/{}:{}", self.namespace, self.name, self.port)
        }
    }
}

/// One endpoint of a service port, with the conditions that decide whether it is used.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// `nodeName` of the endpoint, if given.
    pub node: Option<String>,
    /// On this node (`nodeName` equals our node name).
    pub local: bool,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `hints.forZones[].name`.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`.
    pub node_hints: Vec<String>,
}

impl Endpoint {
    pub fn addr(&self) -> EndpointAddr {
        EndpointAddr {
            ip: self.ip,
            port: self.port,
        }
    }
}

/// Where traffic is finally sent: an endpoint's address and target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EndpointAddr {
    pub ip: IpAddr,
    pub port: u16,
}

impl fmt::Display for EndpointAddr {
    /// `ip:port`, or `[ip]:port` for IPv6.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// Everything one service port needs in one family. All address lists hold only addresses
/// of this family, sorted and deduplicated.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub cluster_ip: IpAddr,
    pub port: u16,
    /// 0 when the service has no node port.
    pub node_port: u16,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` with ipMode VIP (or unset).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `loadBalancerSourceRanges` of this family (only meaningful with LB IPs).
    pub source_ranges: Vec<IpNetwork>,
    /// Session affinity ClientIP with this timeout in seconds; `None` without affinity.
    pub affinity_timeout: Option<u32>,
    /// externalTrafficPolicy Local (only ever true when externally accessible).
    pub external_policy_local: bool,
    /// internalTrafficPolicy Local.
    pub internal_policy_local: bool,
    /// `healthCheckNodePort` (eTP Local LoadBalancer services), 0 if none.
    pub health_check_node_port: u16,
    /// Every endpoint of this family the slices list for this port, sorted (address and
    /// port first; `render` relies on it).
    pub endpoints: Vec<Endpoint>,
    /// Endpoints used for Cluster traffic policy (after readiness, terminating fallback
    /// and topology). Empty when the port does not use cluster endpoints.
    pub cluster_endpoints: Vec<EndpointAddr>,
    /// Endpoints used for Local traffic policy. Empty when not used or none local.
    pub local_endpoints: Vec<EndpointAddr>,
    /// True when the service has usable endpoints anywhere in the cluster.
    pub has_endpoints: bool,
}

impl ServicePort {
    /// NodePort, externalIPs or LoadBalancer IPs: the port takes "external" traffic.
    pub fn externally_accessible(&self) -> bool {
        self.node_port != 0 || !self.external_ips.is_empty() || !self.load_balancer_ips.is_empty()
    }
    /// The Cluster-policy endpoint list is in use (ClusterIP with iTP Cluster, or any
    /// external traffic: even with eTP Local, pods and the node short-circuit to it).
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local || self.externally_accessible()
    }
    /// The Local-policy endpoint list is in use.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local || (self.external_policy_local && self.externally_accessible())
    }
    /// Endpoints reached by ClusterIP traffic.
    pub fn internal_endpoints(&self) -> &[EndpointAddr] {
        if self.internal_policy_local {
            &self.local_endpoints
        } else {
            &self.cluster_endpoints
        }
    }
    /// Endpoints reached by external traffic from outside the node.
    pub fn external_endpoints(&self) -> &[EndpointAddr] {
        if self.external_policy_local {
            &self.local_endpoints
        } else {
            &self.cluster_endpoints
        }
    }
}

/// The node-level part of one IP family's model: what every rule of the family shares
/// (the skeleton), apart from the service ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FamilySettings {
    pub family: Family,
    /// The node's primary IP of this family, if it has one.
    pub node_ip: Option<IpAddr>,
    pub nodeport_ips: NodePortIps,
    pub local_detect: LocalDetect,
    pub masquerade_all: bool,
    /// The mark bit value (`1 << masqueradeBit`), as `config` validated it.
    pub masquerade_mark: u32,
    /// Service CIDRs of this family (from ServiceCIDR objects): unallocated addresses
    /// inside them are dropped.
    pub service_cidrs: Vec<IpNetwork>,
}

/// The model of one IP family: its node-level settings and its service ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FamilyModel {
    /// Serialized inline (the JSON output shows one flat object per family).
    #[serde(flatten)]
    pub settings: FamilySettings,
    /// Service ports, sorted by name.
    pub services: Vec<ServicePort>,
}

/// The whole model: one entry per family kproxy serves (IPv4 first).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Model {
    pub families: Vec<FamilyModel>,
}

impl Model {
    pub fn family(&self, family: Family) -> Option<&FamilyModel> {
        self.families.iter().find(|f| f.settings.family == family)
    }
}

/// An object that was skipped (or partly skipped), and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Warning {
    /// `Kind namespace/name` (or `Kind name` for cluster-scoped objects).
    pub object: String,
    pub reason: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}
