//! `build`: Kubernetes objects + proxy settings → [`Model`] and warnings (pure).
//!
//! Follows upstream kube-proxy (kubernetes/kubernetes `pkg/proxy`):
//!
//! - Services (`servicechangetracker.go`, `serviceport.go`, `util/utils.go`): ExternalName,
//!   headless and ClusterIP-less Services are skipped, as are Services labelled
//!   `service.kubernetes.io/service-proxy-name` (unless the label names us). One service port
//!   per `spec.ports[]` entry and family in which the Service has a ClusterIP; externalIPs,
//!   LoadBalancer IPs (ipMode VIP or unset) and source ranges are split by family.
//!   externalTrafficPolicy Local counts only for externally accessible types (NodePort,
//!   LoadBalancer, or ClusterIP with externalIPs: `pkg/api/v1/service/util.go`);
//!   `healthCheckNodePort` only for LoadBalancer + eTP Local.
//! - EndpointSlices (`endpointslicecache.go`, `endpointschangetracker.go`): joined by the
//!   `kubernetes.io/service-name` label, only address types IPv4/IPv6, slice ports matched to
//!   service ports by name and protocol, only the first address of each endpoint is used,
//!   `ready` nil → true, `serving` nil → true, `terminating` nil → false. The same IP:port in
//!   several slices counts once, a non-terminating copy winning over a terminating one.
//! - Endpoint selection (`topology.go` `CategorizeEndpoints`): ready endpoints, else
//!   serving+terminating ones, decided separately for the Cluster and the Local list;
//!   topology hints (node hints, then zone hints) narrow only the Cluster list.
//! - Node (`pkg/util/node` `GetNodeHostIPs`, `cmd/kube-proxy/app/server*.go`,
//!   `util/nodeport_addresses.go`): the primary IP of a family is the first InternalIP of
//!   that family, else the first ExternalIP. `nodePortAddresses` CIDRs are filtered by
//!   family; a family with no CIDR (or a /0) matches every local address, and so does
//!   `primary` in a family without a node IP. Loopback addresses never serve NodePorts.
//! - Local-traffic detector (`server_linux.go` `getLocalDetectors`): ClusterCIDR and NodeCIDR
//!   use the *first* CIDR of each family (cluster CIDRs / the node's `spec.podCIDRs`);
//!   no CIDR of a family → no detector in that family.
//!
//! Bad input never stops the build: the offending piece is skipped and a [`Warning`] names
//! the object and the reason. The result does not depend on the order of the objects.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    Endpoint, EndpointAddr, Family, FamilyModel, LocalDetect, Model, NodePortIps, Protocol,
    ServicePort, ServicePortName, Warning, DEFAULT_AFFINITY_TIMEOUT, DEFAULT_MASQUERADE_BIT,
    LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, LABEL_ZONE,
};

/// The Kubernetes objects a build reads (from informers or manifests).
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
    pub service_cidrs: Vec<ServiceCIDR>,
}

/// `--detect-local-mode` / `detectLocalMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DetectLocalMode {
    #[default]
    ClusterCidr,
    NodeCidr,
    BridgeInterface,
    InterfaceNamePrefix,
    /// No detection (not an upstream flag value; reached when ClusterCIDR mode has no CIDR).
    None,
}

/// `--nodeport-addresses` / `nodePortAddresses`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// `primary` (the default): the node's primary IP of each family.
    #[default]
    Primary,
    /// Local addresses inside these CIDRs (`0.0.0.0/0` / `::/0` mean every local address).
    Cidrs(Vec<IpNetwork>),
}

/// The part of the proxy configuration the pure core needs (validated, typed; no I/O).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// This node's name (`--hostname-override`, default the host name).
    pub hostname: String,
    /// `--cluster-cidr`, any number of CIDRs of either family.
    pub cluster_cidrs: Vec<IpNetwork>,
    pub detect_local_mode: DetectLocalMode,
    /// `--pod-bridge-interface`.
    pub bridge_interface: String,
    /// `--pod-interface-name-prefix`.
    pub interface_name_prefix: String,
    pub masquerade_all: bool,
    pub masquerade_bit: u8,
    pub nodeport_addresses: NodePortAddresses,
    /// Services labelled `service.kubernetes.io/service-proxy-name` are ours only when the
    /// label equals this.
    pub service_proxy_name: Option<String>,
    /// The host's interface addresses, for matching nodePortAddresses CIDRs. `None` in
    /// dry runs: then the Node object's addresses stand in.
    pub local_addresses: Option<Vec<IpAddr>>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            hostname: String::new(),
            cluster_cidrs: Vec::new(),
            detect_local_mode: DetectLocalMode::ClusterCidr,
            bridge_interface: String::new(),
            interface_name_prefix: String::new(),
            masquerade_all: false,
            masquerade_bit: super::DEFAULT_MASQUERADE_BIT,
            nodeport_addresses: NodePortAddresses::Primary,
            service_proxy_name: None,
            local_addresses: None,
        }
    }
}

/// Both families, in model order.
const FAMILIES: [Family; 2] = [Family::V4, Family::V6];
/// Largest `sessionAffinityConfig.clientIP.timeoutSeconds` the API accepts (one day).
const MAX_AFFINITY_TIMEOUT: i32 = 86_400;
/// Namespace of objects that do not name one (as `kubectl apply` would place them).
const DEFAULT_NAMESPACE: &str = "default";

/// Builds the model for both families (IPv4 first, then IPv6; both always present).
pub fn build(objects: &Objects, settings: &Settings) -> (Model, Vec<Warning>) {
    let mut warnings = Warnings::default();

    let node = NodeInfo::collect(&objects.nodes, &settings.hostname, &mut warnings);
    let masquerade_mark = masquerade_mark(settings.masquerade_bit, &mut warnings);
    let service_cidrs = collect_service_cidrs(&objects.service_cidrs, &mut warnings);
    let services = collect_services(&objects.services, settings, &mut warnings);
    let endpoints = collect_endpoints(&objects.slices, settings, &services, &mut warnings);

    let families = FAMILIES
        .iter()
        .map(|&family| FamilyModel {
            family,
            node_ip: node.primary_ip(family),
            nodeport_ips: nodeport_ips(family, settings, &node),
            local_detect: local_detect(family, settings, &node),
            masquerade_all: settings.masquerade_all,
            masquerade_mark,
            service_cidrs: service_cidrs
                .iter()
                .copied()
                .filter(|net| net_family(net) == family)
                .collect(),
            services: family_services(family, &services, &endpoints, settings, &node),
        })
        .collect();

    (Model { families }, warnings.finish())
}

// ---------------------------------------------------------------------------------------
// Warnings and small parsers
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Warnings(Vec<Warning>);

impl Warnings {
    fn push(&mut self, object: &str, reason: impl Into<String>) {
        self.0.push(Warning {
            object: object.to_string(),
            reason: reason.into(),
        });
    }

    fn finish(mut self) -> Vec<Warning> {
        self.0.sort();
        self.0.dedup();
        self.0
    }
}

fn net_family(net: &IpNetwork) -> Family {
    match net {
        IpNetwork::V4(_) => Family::V4,
        IpNetwork::V6(_) => Family::V6,
    }
}

/// An IP address exactly as Kubernetes writes it (no surrounding spaces, no prefix).
fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

/// A CIDR (`addr/prefix`, a bare address is not one), with the host bits cleared as Go's
/// `net.ParseCIDR` does.
fn parse_cidr(s: &str) -> Option<IpNetwork> {
    if !s.contains('/') {
        return None;
    }
    let net: IpNetwork = s.parse().ok()?;
    Some(normalize(net))
}

fn normalize(net: IpNetwork) -> IpNetwork {
    IpNetwork::new(net.network(), net.prefix()).unwrap_or(net)
}

/// A port number 1..=65535.
fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|&p| p != 0)
}

fn sorted_dedup<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v.dedup();
    v
}

fn namespace_of(meta: &ObjectMeta) -> &str {
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => ns,
        _ => DEFAULT_NAMESPACE,
    }
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// Services and EndpointSlices labelled for another proxy are not ours (upstream's informers
/// select `!service.kubernetes.io/service-proxy-name`; we also accept our own name).
fn for_other_proxy(meta: &ObjectMeta, settings: &Settings) -> bool {
    match label(meta, LABEL_SERVICE_PROXY_NAME) {
        None => false,
        Some(name) => settings.service_proxy_name.as_deref() != Some(name),
    }
}

/// Objects with their key (`namespace/name`), in key order.
type Keyed<'a, T> = Vec<(String, &'a T)>;

/// Orders objects by a key and, for objects sharing a key (which the API server never
/// allows, but manifests may contain), by their serialized form so that the choice among
/// duplicates does not depend on input order. Returns the kept objects and the keys that had
/// duplicates.
fn sort_unique<'a, T: serde::Serialize + 'a>(
    items: impl IntoIterator<Item = (String, &'a T)>,
) -> (Keyed<'a, T>, Vec<(String, usize)>) {
    let mut items: Keyed<'a, T> = items.into_iter().collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut kept: Keyed<'a, T> = Vec::with_capacity(items.len());
    let mut duplicates: Vec<(String, usize)> = Vec::new();
    let mut rest = items.as_slice();
    while let Some((key, _)) = rest.first() {
        let run = rest.iter().take_while(|(k, _)| k == key).count();
        let (group, tail) = rest.split_at(run);
        rest = tail;
        if run == 1 {
            kept.push(group[0].clone());
            continue;
        }
        // Only serialize on a collision: pick the smallest serialized form.
        let chosen = group
            .iter()
            .min_by_key(|(_, item)| serde_json::to_string(item).unwrap_or_default())
            .cloned()
            .unwrap_or_else(|| group[0].clone());
        duplicates.push((key.clone(), run));
        kept.push(chosen);
    }
    (kept, duplicates)
}

fn masquerade_mark(bit: u8, warnings: &mut Warnings) -> u32 {
    match 1u32.checked_shl(u32::from(bit)) {
        Some(mark) => mark,
        None => {
            warnings.push(
                "KubeProxyConfiguration",
                format!("masqueradeBit {bit} is outside 0..31; using {DEFAULT_MASQUERADE_BIT}"),
            );
            1 << DEFAULT_MASQUERADE_BIT
        }
    }
}

// ---------------------------------------------------------------------------------------
// Node
// ---------------------------------------------------------------------------------------

/// What the own Node object tells us.
#[derive(Default)]
struct NodeInfo {
    /// `(type, address)` of every parseable InternalIP / ExternalIP, in order.
    addresses: Vec<(String, IpAddr)>,
    /// `spec.podCIDRs` (or `spec.podCIDR`), parsed, in order.
    pod_cidrs: Vec<IpNetwork>,
    /// `topology.kubernetes.io/zone`, empty when unknown.
    zone: String,
}

impl NodeInfo {
    fn collect(nodes: &[Node], hostname: &str, warnings: &mut Warnings) -> NodeInfo {
        let object = format!("Node {hostname}");
        let candidates = nodes
            .iter()
            .filter(|n| n.metadata.name.as_deref() == Some(hostname))
            .map(|n| (hostname.to_string(), n));
        let (kept, duplicates) = sort_unique(candidates);
        if let Some((_, count)) = duplicates.first() {
            warnings.push(
                &object,
                format!("{count} Node objects have this name; using one of them"),
            );
        }
        let Some((_, node)) = kept.first() else {
            warnings.push(
                &object,
                "no Node object with this name (the configured hostname): node IPs, pod CIDRs \
                 and zone are unknown",
            );
            return NodeInfo::default();
        };

        let mut info = NodeInfo {
            zone: label(&node.metadata, LABEL_ZONE).unwrap_or("").to_string(),
            ..NodeInfo::default()
        };

        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or(&[]);
        for (i, addr) in addresses.iter().enumerate() {
            if addr.type_ != "InternalIP" && addr.type_ != "ExternalIP" {
                continue;
            }
            match parse_ip(&addr.address) {
                Some(ip) => info.addresses.push((addr.type_.clone(), ip)),
                None => warnings.push(
                    &object,
                    format!(
                        "status.addresses[{i}] ({}) {:?} is not an IP address",
                        addr.type_, addr.address
                    ),
                ),
            }
        }

        let spec = node.spec.as_ref();
        let (field, cidrs): (&str, Vec<String>) = match spec
            .and_then(|s| s.pod_cidrs.clone())
            .filter(|c| !c.is_empty())
        {
            Some(cidrs) => ("spec.podCIDRs", cidrs),
            None => (
                "spec.podCIDR",
                spec.and_then(|s| s.pod_cidr.clone())
                    .filter(|c| !c.is_empty())
                    .into_iter()
                    .collect(),
            ),
        };
        for (i, cidr) in cidrs.iter().enumerate() {
            match parse_cidr(cidr) {
                Some(net) => info.pod_cidrs.push(net),
                None => {
                    let at = if field == "spec.podCIDRs" {
                        format!("{field}[{i}]")
                    } else {
                        field.to_string()
                    };
                    warnings.push(&object, format!("{at} {cidr:?} is not a CIDR"));
                }
            }
        }
        info
    }

    /// The first InternalIP of the family, else the first ExternalIP of it.
    fn primary_ip(&self, family: Family) -> Option<IpAddr> {
        ["InternalIP", "ExternalIP"].iter().find_map(|kind| {
            self.addresses
                .iter()
                .find(|(t, ip)| t == kind && family.contains(ip))
                .map(|(_, ip)| *ip)
        })
    }
}

fn nodeport_ips(family: Family, settings: &Settings, node: &NodeInfo) -> NodePortIps {
    match &settings.nodeport_addresses {
        NodePortAddresses::Primary => match node.primary_ip(family) {
            Some(ip) if !ip.is_loopback() => NodePortIps::Ips(vec![ip]),
            // Upstream turns `primary` into `<nodeIP>/32` per family that has a node IP; a
            // family left without CIDRs matches every local address.
            _ => NodePortIps::All,
        },
        NodePortAddresses::Cidrs(cidrs) => {
            let cidrs: Vec<IpNetwork> = cidrs
                .iter()
                .filter(|net| net_family(net) == family)
                .map(|net| normalize(*net))
                .collect();
            if cidrs.is_empty() || cidrs.iter().any(|net| net.prefix() == 0) {
                return NodePortIps::All;
            }
            let local: Vec<IpAddr> = match &settings.local_addresses {
                Some(addrs) => addrs.clone(),
                None => node.addresses.iter().map(|(_, ip)| *ip).collect(),
            };
            NodePortIps::Ips(sorted_dedup(
                local
                    .into_iter()
                    .filter(|ip| family.contains(ip) && !ip.is_loopback())
                    .filter(|ip| cidrs.iter().any(|net| net.contains(*ip)))
                    .collect(),
            ))
        }
    }
}

fn local_detect(family: Family, settings: &Settings, node: &NodeInfo) -> LocalDetect {
    let first_cidr = |cidrs: &[IpNetwork]| {
        cidrs
            .iter()
            .find(|net| net_family(net) == family)
            .map(|net| LocalDetect::SourceCidrs(vec![normalize(*net)]))
            .unwrap_or(LocalDetect::None)
    };
    match settings.detect_local_mode {
        DetectLocalMode::ClusterCidr => first_cidr(&settings.cluster_cidrs),
        DetectLocalMode::NodeCidr => first_cidr(&node.pod_cidrs),
        DetectLocalMode::BridgeInterface if !settings.bridge_interface.is_empty() => {
            LocalDetect::Interface(settings.bridge_interface.clone())
        }
        DetectLocalMode::InterfaceNamePrefix if !settings.interface_name_prefix.is_empty() => {
            LocalDetect::InterfacePrefix(settings.interface_name_prefix.clone())
        }
        DetectLocalMode::BridgeInterface
        | DetectLocalMode::InterfaceNamePrefix
        | DetectLocalMode::None => LocalDetect::None,
    }
}

// ---------------------------------------------------------------------------------------
// ServiceCIDRs
// ---------------------------------------------------------------------------------------

fn collect_service_cidrs(objects: &[ServiceCIDR], warnings: &mut Warnings) -> Vec<IpNetwork> {
    let mut out = Vec::new();
    for sc in objects {
        let name = sc.metadata.name.as_deref().unwrap_or("");
        let cidrs = sc
            .spec
            .as_ref()
            .and_then(|s| s.cidrs.as_deref())
            .unwrap_or(&[]);
        for (i, cidr) in cidrs.iter().enumerate() {
            match parse_cidr(cidr) {
                Some(net) => out.push(net),
                None => warnings.push(
                    &format!("ServiceCIDR {name}"),
                    format!("spec.cidrs[{i}] {cidr:?} is not a CIDR"),
                ),
            }
        }
    }
    sorted_dedup(out)
}

// ---------------------------------------------------------------------------------------
// Services
// ---------------------------------------------------------------------------------------

/// One usable `spec.ports[]` entry.
struct SvcPort {
    name: String,
    protocol: Protocol,
    port: u16,
    node_port: u16,
}

/// A Service we proxy, validated, family-independent.
struct Svc {
    namespace: String,
    name: String,
    /// Valid cluster IPs, at most one per family.
    cluster_ips: Vec<IpAddr>,
    ports: Vec<SvcPort>,
    external_ips: Vec<IpAddr>,
    load_balancer_ips: Vec<IpAddr>,
    source_ranges: Vec<IpNetwork>,
    affinity_timeout: Option<u32>,
    external_policy_local: bool,
    internal_policy_local: bool,
    health_check_node_port: u16,
}

/// The services we proxy, and the names of every Service object (proxied or not).
struct Services {
    proxied: BTreeMap<(String, String), Svc>,
    existing: BTreeSet<(String, String)>,
}

fn collect_services(objects: &[Service], settings: &Settings, warnings: &mut Warnings) -> Services {
    let mut existing = BTreeSet::new();
    let mut named = Vec::new();
    for svc in objects {
        let namespace = namespace_of(&svc.metadata);
        match svc.metadata.name.as_deref() {
            Some(name) if !name.is_empty() => {
                existing.insert((namespace.to_string(), name.to_string()));
                named.push((format!("{namespace}/{name}"), svc));
            }
            _ => warnings.push(
                &format!("Service {namespace}/"),
                "metadata.name is missing; ignored",
            ),
        }
    }
    let (kept, duplicates) = sort_unique(named);
    for (key, count) in duplicates {
        warnings.push(
            &format!("Service {key}"),
            format!("{count} Service objects have this name; using one of them"),
        );
    }
    let proxied = kept
        .into_iter()
        .filter_map(|(_, svc)| parse_service(svc, settings, warnings))
        .map(|svc| ((svc.namespace.clone(), svc.name.clone()), svc))
        .collect();
    Services { proxied, existing }
}

fn parse_service(svc: &Service, settings: &Settings, warnings: &mut Warnings) -> Option<Svc> {
    let namespace = namespace_of(&svc.metadata).to_string();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let object = format!("Service {namespace}/{name}");
    let mut warn = |reason: String| warnings.push(&object, reason);

    if for_other_proxy(&svc.metadata, settings) {
        return None;
    }
    let spec = svc.spec.as_ref()?;
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    match type_ {
        "ExternalName" => return None,
        "ClusterIP" | "NodePort" | "LoadBalancer" => {}
        other => warn(format!(
            "spec.type {other:?} is not ClusterIP, NodePort, LoadBalancer or ExternalName; \
             treated as ClusterIP"
        )),
    }

    // Cluster IPs: `spec.clusterIPs` (falling back to `spec.clusterIP`); "None" = headless.
    let primary = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
        .or_else(|| spec.cluster_ips.as_ref()?.first().map(String::as_str))
        .unwrap_or("");
    if primary.is_empty() || primary == "None" {
        return None;
    }
    let (field, raw_ips): (&str, Vec<String>) = match spec.cluster_ips.as_ref() {
        Some(ips) if !ips.is_empty() => ("spec.clusterIPs", ips.clone()),
        _ => ("spec.clusterIP", vec![primary.to_string()]),
    };
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    for (i, raw) in raw_ips.iter().enumerate() {
        let at = if field == "spec.clusterIPs" {
            format!("{field}[{i}]")
        } else {
            field.to_string()
        };
        match parse_ip(raw) {
            None => warn(format!("{at} {raw:?} is not an IP address")),
            Some(ip) if cluster_ips.iter().any(|c| Family::of(c) == Family::of(&ip)) => {
                warn(format!(
                    "{at} {raw:?} is a second {} cluster IP; ignored",
                    Family::of(&ip)
                ))
            }
            Some(ip) => cluster_ips.push(ip),
        }
    }
    if cluster_ips.is_empty() {
        return None;
    }

    // Ports.
    let mut ports: Vec<SvcPort> = Vec::new();
    for (i, p) in spec.ports.as_deref().unwrap_or(&[]).iter().enumerate() {
        let port_name = p.name.clone().unwrap_or_default();
        let protocol_text = p.protocol.as_deref().unwrap_or("TCP");
        let Some(protocol) = Protocol::parse(protocol_text) else {
            warn(format!(
                "spec.ports[{i}].protocol {protocol_text:?} is not TCP, UDP or SCTP; port ignored"
            ));
            continue;
        };
        let Some(port) = valid_port(p.port) else {
            warn(format!(
                "spec.ports[{i}].port {} is outside 1..65535; port ignored",
                p.port
            ));
            continue;
        };
        if ports.iter().any(|q| q.name == port_name) {
            warn(format!(
                "spec.ports[{i}]: duplicate port name {port_name:?}; port ignored"
            ));
            continue;
        }
        if ports
            .iter()
            .any(|q| q.port == port && q.protocol == protocol)
        {
            warn(format!(
                "spec.ports[{i}]: duplicate port {port}/{}; port ignored",
                protocol_text.to_ascii_uppercase()
            ));
            continue;
        }
        let node_port = match p.node_port.unwrap_or(0) {
            0 => 0,
            n => valid_port(n).unwrap_or_else(|| {
                warn(format!(
                    "spec.ports[{i}].nodePort {n} is outside 1..65535; no NodePort for this port"
                ));
                0
            }),
        };
        ports.push(SvcPort {
            name: port_name,
            protocol,
            port,
            node_port,
        });
    }

    let raw_external = spec.external_ips.as_deref().unwrap_or(&[]);
    let mut external_ips = Vec::new();
    for (i, raw) in raw_external.iter().enumerate() {
        match parse_ip(raw) {
            Some(ip) => external_ips.push(ip),
            None => warn(format!(
                "spec.externalIPs[{i}] {raw:?} is not an IP address"
            )),
        }
    }

    let mut load_balancer_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or(&[]);
    for (i, ing) in ingress.iter().enumerate() {
        let Some(raw) = ing.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue; // hostname-only ingress
        };
        // Only VIP-style load balancers get rules (ipMode unset means VIP).
        if ing.ip_mode.as_deref().is_some_and(|mode| mode != "VIP") {
            continue;
        }
        match parse_ip(raw) {
            Some(ip) => load_balancer_ips.push(ip),
            None => warn(format!(
                "status.loadBalancer.ingress[{i}].ip {raw:?} is not an IP address"
            )),
        }
    }

    let mut source_ranges = Vec::new();
    for (i, raw) in spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        // The API validation tolerates whitespace padding; upstream trims it.
        match parse_cidr(raw.trim()) {
            Some(net) => source_ranges.push(net),
            None => warn(format!(
                "spec.loadBalancerSourceRanges[{i}] {raw:?} is not a CIDR"
            )),
        }
    }

    let affinity_timeout = if spec.session_affinity.as_deref() == Some("ClientIP") {
        let timeout = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        Some(match timeout {
            None => DEFAULT_AFFINITY_TIMEOUT,
            Some(t) if (1..=MAX_AFFINITY_TIMEOUT).contains(&t) => t as u32,
            Some(t) => {
                warn(format!(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds {t} is outside \
                     1..{MAX_AFFINITY_TIMEOUT}; using {DEFAULT_AFFINITY_TIMEOUT}"
                ));
                DEFAULT_AFFINITY_TIMEOUT
            }
        })
    } else {
        None
    };

    // pkg/api/v1/service/util.go: ExternallyAccessible / ExternalPolicyLocal /
    // NeedsHealthCheck.
    let externally_accessible = matches!(type_, "NodePort" | "LoadBalancer")
        || (type_ == "ClusterIP" && !raw_external.is_empty());
    let external_policy_local =
        externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let health_check_node_port = if type_ == "LoadBalancer" && external_policy_local {
        match spec.health_check_node_port.unwrap_or(0) {
            0 => 0,
            n => valid_port(n).unwrap_or_else(|| {
                warn(format!(
                    "spec.healthCheckNodePort {n} is outside 1..65535; no health check port"
                ));
                0
            }),
        }
    } else {
        0
    };

    Some(Svc {
        namespace,
        name,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ips,
        source_ranges,
        affinity_timeout,
        external_policy_local,
        internal_policy_local,
        health_check_node_port,
    })
}

// ---------------------------------------------------------------------------------------
// EndpointSlices
// ---------------------------------------------------------------------------------------

/// Endpoints of one service port (any family), keyed by address.
type EndpointSet = BTreeMap<(IpAddr, u16), Endpoint>;
/// Endpoints of a service, by (port name, protocol).
type ServiceEndpoints = BTreeMap<(String, Protocol), EndpointSet>;
/// Endpoints of every service, by (namespace, name).
type AllEndpoints = BTreeMap<(String, String), ServiceEndpoints>;

fn collect_endpoints(
    slices: &[EndpointSlice],
    settings: &Settings,
    services: &Services,
    warnings: &mut Warnings,
) -> AllEndpoints {
    let mut named = Vec::new();
    for slice in slices {
        let namespace = namespace_of(&slice.metadata);
        match slice.metadata.name.as_deref() {
            Some(name) if !name.is_empty() => named.push((format!("{namespace}/{name}"), slice)),
            _ => warnings.push(
                &format!("EndpointSlice {namespace}/"),
                "metadata.name is missing; ignored",
            ),
        }
    }
    let (kept, duplicates) = sort_unique(named);
    for (key, count) in duplicates {
        warnings.push(
            &format!("EndpointSlice {key}"),
            format!("{count} EndpointSlice objects have this name; using one of them"),
        );
    }

    let mut all = AllEndpoints::new();
    for (key, slice) in kept {
        add_slice(&key, slice, settings, services, &mut all, warnings);
    }
    all
}

fn add_slice(
    key: &str,
    slice: &EndpointSlice,
    settings: &Settings,
    services: &Services,
    all: &mut AllEndpoints,
    warnings: &mut Warnings,
) {
    let object = format!("EndpointSlice {key}");
    let mut warn = |reason: String| warnings.push(&object, reason);
    let meta = &slice.metadata;

    if label(meta, LABEL_HEADLESS).is_some() || for_other_proxy(meta, settings) {
        return;
    }
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        "FQDN" => return,
        other => {
            warn(format!(
                "addressType {other:?} is not IPv4, IPv6 or FQDN; ignored"
            ));
            return;
        }
    };
    let Some(service_name) = label(meta, LABEL_SERVICE_NAME).filter(|n| !n.is_empty()) else {
        warn(format!("has no {LABEL_SERVICE_NAME} label; ignored"));
        return;
    };
    let namespace = namespace_of(meta).to_string();
    let service_key = (namespace.clone(), service_name.to_string());
    if !services.existing.contains(&service_key) {
        warn(format!(
            "Service {namespace}/{service_name} (label {LABEL_SERVICE_NAME}) does not exist; \
             ignored"
        ));
        return;
    }
    let Some(svc) = services.proxied.get(&service_key) else {
        return; // a Service we do not proxy (ExternalName, headless, another proxy's, ...)
    };

    // Slice ports that name a port of the Service.
    let mut ports: Vec<((String, Protocol), u16)> = Vec::new();
    for (i, p) in slice.ports.as_deref().unwrap_or(&[]).iter().enumerate() {
        let Some(name) = p.name.as_deref() else {
            warn(format!(
                "ports[{i}] has no name (an unnamed service port is matched by name \"\"); \
                 ignored"
            ));
            continue;
        };
        let protocol_text = p.protocol.as_deref().unwrap_or("TCP");
        let Some(protocol) = Protocol::parse(protocol_text) else {
            warn(format!(
                "ports[{i}].protocol {protocol_text:?} is not TCP, UDP or SCTP; ignored"
            ));
            continue;
        };
        let Some(number) = p.port.and_then(valid_port) else {
            let shown = p.port.map_or("missing".to_string(), |n| n.to_string());
            warn(format!(
                "ports[{i}].port {shown} is outside 1..65535; ignored"
            ));
            continue;
        };
        if !svc
            .ports
            .iter()
            .any(|sp| sp.name == name && sp.protocol == protocol)
        {
            warn(format!(
                "ports[{i}] ({name:?}, {}) matches no port of Service \
                 {namespace}/{service_name}; ignored",
                protocol_text.to_ascii_uppercase()
            ));
            continue;
        }
        ports.push(((name.to_string(), protocol), number));
    }

    // Endpoints: upstream reads only the first address of each.
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for (j, ep) in slice.endpoints.as_deref().unwrap_or(&[]).iter().enumerate() {
        let Some(raw) = ep.addresses.first() else {
            warn(format!("endpoints[{j}] has no addresses; ignored"));
            continue;
        };
        let Some(ip) = parse_ip(raw) else {
            warn(format!(
                "endpoints[{j}].addresses[0] {raw:?} is not an IP address; ignored"
            ));
            continue;
        };
        if !family.contains(&ip) {
            warn(format!(
                "endpoints[{j}].addresses[0] {raw:?} is not an {} address \
                 (addressType {}); ignored",
                if family == Family::V4 { "IPv4" } else { "IPv6" },
                slice.address_type
            ));
            continue;
        }
        let conditions = ep.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        let serving = conditions.and_then(|c| c.serving).unwrap_or(true);
        let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
        let hints = ep.hints.as_ref();
        let zone_hints = sorted_dedup(
            hints
                .and_then(|h| h.for_zones.as_deref())
                .unwrap_or(&[])
                .iter()
                .map(|z| z.name.clone())
                .collect(),
        );
        let node_hints = sorted_dedup(
            hints
                .and_then(|h| h.for_nodes.as_deref())
                .unwrap_or(&[])
                .iter()
                .map(|n| n.name.clone())
                .collect(),
        );
        let local = !settings.hostname.is_empty()
            && ep.node_name.as_deref() == Some(settings.hostname.as_str());
        endpoints.push(Endpoint {
            ip,
            port: 0,
            node: ep.node_name.clone(),
            local,
            ready,
            serving,
            terminating,
            zone_hints,
            node_hints,
        });
    }

    let svc_endpoints = all.entry(service_key).or_default();
    for (port_key, number) in ports {
        let set = svc_endpoints.entry(port_key).or_default();
        for ep in &endpoints {
            let ep = Endpoint {
                port: number,
                ..ep.clone()
            };
            // The same IP:port listed twice (an endpoint moving between slices, or an IP
            // reused by a new pod): keep the first, unless only a later copy is not
            // terminating.
            match set.get(&(ep.ip, ep.port)) {
                Some(existing) if !existing.terminating || ep.terminating => {}
                _ => {
                    set.insert((ep.ip, ep.port), ep);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Service ports and endpoint selection
// ---------------------------------------------------------------------------------------

fn family_services(
    family: Family,
    services: &Services,
    endpoints: &AllEndpoints,
    settings: &Settings,
    node: &NodeInfo,
) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for (key, svc) in &services.proxied {
        let Some(&cluster_ip) = svc.cluster_ips.iter().find(|ip| family.contains(ip)) else {
            continue;
        };
        let external_ips = sorted_dedup(
            svc.external_ips
                .iter()
                .copied()
                .filter(|ip| family.contains(ip))
                .collect(),
        );
        let load_balancer_ips = sorted_dedup(
            svc.load_balancer_ips
                .iter()
                .copied()
                .filter(|ip| family.contains(ip))
                .collect(),
        );
        let source_ranges = sorted_dedup(
            svc.source_ranges
                .iter()
                .copied()
                .filter(|net| net_family(net) == family)
                .collect(),
        );
        for port in &svc.ports {
            let eps: Vec<Endpoint> = endpoints
                .get(key)
                .and_then(|by_port| by_port.get(&(port.name.clone(), port.protocol)))
                .map(|set| {
                    set.values()
                        .filter(|ep| family.contains(&ep.ip))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let mut sp = ServicePort {
                name: ServicePortName {
                    namespace: svc.namespace.clone(),
                    name: svc.name.clone(),
                    port: port.name.clone(),
                    protocol: port.protocol,
                },
                cluster_ip,
                port: port.port,
                node_port: port.node_port,
                external_ips: external_ips.clone(),
                load_balancer_ips: load_balancer_ips.clone(),
                source_ranges: source_ranges.clone(),
                affinity_timeout: svc.affinity_timeout,
                external_policy_local: svc.external_policy_local,
                internal_policy_local: svc.internal_policy_local,
                health_check_node_port: svc.health_check_node_port,
                endpoints: sorted_dedup(eps),
                cluster_endpoints: Vec::new(),
                local_endpoints: Vec::new(),
                has_endpoints: false,
            };
            categorize_endpoints(&mut sp, &settings.hostname, &node.zone);
            out.push(sp);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// How topology hints narrow the Cluster endpoint list.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Topology {
    /// No narrowing.
    Any,
    /// Only endpoints hinted for this node (trafficDistribution PreferSameNode).
    SameNode,
    /// Only endpoints hinted for this node's zone (PreferSameZone / PreferClose / hints).
    SameZone,
}

/// Node hints win when every ready endpoint has one and one names this node; else zone
/// hints when every ready endpoint has one and one names this zone; else none.
fn topology_mode(endpoints: &[Endpoint], node_name: &str, zone: &str) -> Topology {
    let ready: Vec<&Endpoint> = endpoints.iter().filter(|ep| ep.ready).collect();
    if ready.is_empty() {
        return Topology::Any;
    }
    let all_node_hints = ready.iter().all(|ep| !ep.node_hints.is_empty());
    let for_node = ready
        .iter()
        .any(|ep| ep.node_hints.iter().any(|n| n == node_name));
    if all_node_hints && for_node {
        return Topology::SameNode;
    }
    let all_zone_hints = ready.iter().all(|ep| !ep.zone_hints.is_empty());
    let for_zone = ready
        .iter()
        .any(|ep| ep.zone_hints.iter().any(|z| z == zone));
    if all_zone_hints && for_zone {
        return Topology::SameZone;
    }
    Topology::Any
}

fn available_for_topology(ep: &Endpoint, mode: Topology, node_name: &str, zone: &str) -> bool {
    match mode {
        Topology::Any => true,
        Topology::SameNode => ep.node_hints.iter().any(|n| n == node_name),
        Topology::SameZone => ep.zone_hints.iter().any(|z| z == zone),
    }
}

/// Fills `cluster_endpoints`, `local_endpoints` and `has_endpoints` from `endpoints`, as
/// upstream's `CategorizeEndpoints` does. `node_name` is this node's name, `zone` its zone
/// ("" when unknown).
pub fn categorize_endpoints(sp: &mut ServicePort, node_name: &str, zone: &str) {
    let addrs = |pred: &dyn Fn(&Endpoint) -> bool| -> Vec<EndpointAddr> {
        sorted_dedup(
            sp.endpoints
                .iter()
                .filter(|ep| pred(ep))
                .map(Endpoint::addr)
                .collect(),
        )
    };
    let serving_terminating = |ep: &Endpoint| ep.serving && ep.terminating;

    let mut cluster = Vec::new();
    let mut local = Vec::new();
    let mut has_endpoints = false;

    if !sp.endpoints.is_empty() {
        if sp.uses_cluster_endpoints() {
            let mode = topology_mode(&sp.endpoints, node_name, zone);
            cluster = addrs(&|ep| ep.ready && available_for_topology(ep, mode, node_name, zone));
            if cluster.is_empty() {
                // No ready endpoint anywhere (topology already falls back when none is ready
                // in this zone/node): use serving terminating ones.
                cluster = addrs(&serving_terminating);
            }
            has_endpoints = !cluster.is_empty();
        }
        if sp.uses_local_endpoints() {
            let mut local_ready = false;
            let mut local_serving_terminating = false;
            for ep in &sp.endpoints {
                if ep.ready {
                    has_endpoints = true;
                    local_ready |= ep.local;
                } else if serving_terminating(ep) {
                    has_endpoints = true;
                    local_serving_terminating |= ep.local;
                }
            }
            if local_ready {
                local = addrs(&|ep| ep.local && ep.ready);
            } else if local_serving_terminating {
                local = addrs(&|ep| ep.local && serving_terminating(ep));
            }
        }
    }

    sp.cluster_endpoints = cluster;
    sp.local_endpoints = local;
    sp.has_endpoints = has_endpoints;
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use serde_json::{json, Value};

    use super::*;

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

    // ---- shape ----------------------------------------------------------------------

    #[test]
    fn both_families_always_present_ipv4_first() {
        let (model, warnings) = build(&Objects::default(), &Settings::default());
        assert_eq!(model.families.len(), 2);
        assert_eq!(model.families[0].family, Family::V4);
        assert_eq!(model.families[1].family, Family::V6);
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

    fn etp_local_nodeport(name: &str) -> Service {
        service(json!({"metadata": {"namespace": "ns", "name": name},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
                     "externalTrafficPolicy": "Local",
                     "ports": [{"port": 80, "nodePort": 30080}]}}))
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

    // ---- node, NodePort addresses, detector, family settings --------------------------

    #[test]
    fn node_primary_ips_and_default_nodeport_addresses() {
        let (model, warnings) = build(&objects(vec![], vec![]), &settings());
        assert!(warnings.is_empty(), "{warnings:?}");
        let v4 = family(&model, Family::V4);
        let v6 = family(&model, Family::V6);
        // First InternalIP of the family wins over an earlier ExternalIP.
        assert_eq!(v4.node_ip, Some(ip("192.168.0.10")));
        assert_eq!(v6.node_ip, Some(ip("fd00::10")));
        assert_eq!(v4.nodeport_ips, NodePortIps::Ips(vec![ip("192.168.0.10")]));
        assert_eq!(v6.nodeport_ips, NodePortIps::Ips(vec![ip("fd00::10")]));

        // ExternalIP is the fallback; a family without a node IP matches every local
        // address (upstream: no `primary` CIDR for that family → ::/0).
        let ext_only = node(json!({"metadata": {"name": "node-a"},
            "status": {"addresses": [{"type": "ExternalIP", "address": "203.0.113.10"}]}}));
        let objs = Objects {
            nodes: vec![ext_only],
            ..Objects::default()
        };
        let (model, _) = build(&objs, &settings());
        assert_eq!(family(&model, Family::V4).node_ip, Some(ip("203.0.113.10")));
        assert_eq!(family(&model, Family::V6).node_ip, None);
        assert_eq!(family(&model, Family::V6).nodeport_ips, NodePortIps::All);
    }

    #[test]
    fn missing_node_is_one_warning_and_build_continues() {
        let mut objs = objects(
            vec![simple_service("web", "10.96.0.10")],
            vec![simple_slice(
                "web-1",
                "web",
                8080,
                vec![ready("10.244.1.5", "node-a")],
            )],
        );
        objs.nodes = vec![node(json!({"metadata": {"name": "node-z"}}))];
        let s = Settings {
            detect_local_mode: DetectLocalMode::NodeCidr,
            ..settings()
        };
        let (model, warnings) = build(&objs, &s);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].object, "Node node-a");
        for f in &model.families {
            assert_eq!(f.node_ip, None);
            assert_eq!(f.nodeport_ips, NodePortIps::All);
            assert_eq!(f.local_detect, LocalDetect::None);
        }
        // Locality comes from the hostname, not the Node object.
        let sp = tcp4(&model, "ns/web");
        assert!(sp.endpoints[0].local);
        assert_eq!(sp.cluster_endpoints, addrs(&["10.244.1.5:8080"]));
    }

    #[test]
    fn nodeport_addresses_cidrs() {
        let with = |cidrs: &[&str], local: Option<Vec<&str>>| Settings {
            nodeport_addresses: NodePortAddresses::Cidrs(cidrs.iter().map(|c| net(c)).collect()),
            local_addresses: local.map(|l| l.iter().map(|a| ip(a)).collect()),
            ..settings()
        };
        let objs = objects(vec![], vec![]);
        let run = |s: &Settings| {
            let (model, _) = build(&objs, s);
            (
                family(&model, Family::V4).nodeport_ips.clone(),
                family(&model, Family::V6).nodeport_ips.clone(),
            )
        };

        // Host addresses inside the CIDRs; loopback never; IPv6 has no CIDR → all.
        let s = with(
            &["192.168.0.0/24", "127.0.0.0/8"],
            Some(vec![
                "192.168.0.12",
                "127.0.0.1",
                "10.0.0.1",
                "192.168.0.5",
                "fd00::1",
            ]),
        );
        assert_eq!(
            run(&s),
            (
                NodePortIps::Ips(vec![ip("192.168.0.5"), ip("192.168.0.12")]),
                NodePortIps::All
            )
        );
        // A /0 of a family means all; a CIDR matching nothing means none.
        let s = with(&["0.0.0.0/0", "2001:db8::/64"], Some(vec!["fd00::1"]));
        assert_eq!(run(&s), (NodePortIps::All, NodePortIps::Ips(vec![])));
        // Without host addresses (dry run) the Node's addresses stand in.
        let s = with(&["192.168.0.0/24", "fd00::/64"], None);
        assert_eq!(
            run(&s),
            (
                NodePortIps::Ips(vec![ip("192.168.0.10"), ip("192.168.0.11")]),
                NodePortIps::Ips(vec![ip("fd00::10")])
            )
        );
        // An empty list matches everything.
        assert_eq!(run(&with(&[], None)), (NodePortIps::All, NodePortIps::All));
    }

    #[test]
    fn local_detect_modes() {
        let objs = objects(vec![], vec![]);
        let detect = |s: Settings| {
            let (model, _) = build(&objs, &s);
            (
                family(&model, Family::V4).local_detect.clone(),
                family(&model, Family::V6).local_detect.clone(),
            )
        };
        // ClusterCIDR: the first CIDR of each family (host bits cleared).
        let s = Settings {
            cluster_cidrs: vec![net("10.244.0.0/16"), net("10.245.0.1/16")],
            ..settings()
        };
        assert_eq!(
            detect(s),
            (
                LocalDetect::SourceCidrs(vec![net("10.244.0.0/16")]),
                LocalDetect::None
            )
        );
        assert_eq!(
            detect(settings()),
            (
                LocalDetect::SourceCidrs(vec![net("10.244.0.0/16")]),
                LocalDetect::SourceCidrs(vec![net("fd00:244::/48")])
            )
        );
        // NodeCIDR: the node's podCIDRs.
        let s = Settings {
            detect_local_mode: DetectLocalMode::NodeCidr,
            ..settings()
        };
        assert_eq!(
            detect(s),
            (
                LocalDetect::SourceCidrs(vec![net("10.244.1.0/24")]),
                LocalDetect::SourceCidrs(vec![net("fd00:244:0:1::/64")])
            )
        );
        let s = Settings {
            detect_local_mode: DetectLocalMode::BridgeInterface,
            bridge_interface: "cbr0".into(),
            ..settings()
        };
        assert_eq!(
            detect(s),
            (
                LocalDetect::Interface("cbr0".into()),
                LocalDetect::Interface("cbr0".into())
            )
        );
        let s = Settings {
            detect_local_mode: DetectLocalMode::InterfaceNamePrefix,
            interface_name_prefix: "veth".into(),
            ..settings()
        };
        assert_eq!(
            detect(s),
            (
                LocalDetect::InterfacePrefix("veth".into()),
                LocalDetect::InterfacePrefix("veth".into())
            )
        );
        let s = Settings {
            detect_local_mode: DetectLocalMode::BridgeInterface,
            ..settings()
        };
        assert_eq!(detect(s), (LocalDetect::None, LocalDetect::None));
        let s = Settings {
            detect_local_mode: DetectLocalMode::None,
            ..settings()
        };
        assert_eq!(detect(s), (LocalDetect::None, LocalDetect::None));
    }

    #[test]
    fn masquerade_settings_and_service_cidrs() {
        let mut objs = objects(vec![], vec![]);
        objs.service_cidrs = vec![
            service_cidr(json!({"metadata": {"name": "kubernetes"},
                "spec": {"cidrs": ["10.96.0.0/16", "fd00:96::/112"]}})),
            service_cidr(json!({"metadata": {"name": "extra"},
                "spec": {"cidrs": ["10.100.0.0/24", "10.96.0.0/16"]}})),
        ];
        let s = Settings {
            masquerade_all: true,
            masquerade_bit: 5,
            ..settings()
        };
        let (model, warnings) = build(&objs, &s);
        assert!(warnings.is_empty(), "{warnings:?}");
        for f in &model.families {
            assert!(f.masquerade_all);
            assert_eq!(f.masquerade_mark, 32);
        }
        assert_eq!(
            family(&model, Family::V4).service_cidrs,
            vec![net("10.96.0.0/16"), net("10.100.0.0/24")]
        );
        assert_eq!(
            family(&model, Family::V6).service_cidrs,
            vec![net("fd00:96::/112")]
        );
        let (model, _) = build(&objs, &settings());
        assert_eq!(model.families[0].masquerade_mark, 0x4000);
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

    #[test]
    fn bad_node_and_service_cidr_fields_warn() {
        let bad_node = node(json!({"metadata": {"name": "node-a"},
            "spec": {"podCIDRs": ["10.244.1.0/24x", "fd00:244:0:1::/64"]},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "192.168.0.300"},
                {"type": "InternalIP", "address": "192.168.0.10"}]}}));
        let objs = Objects {
            nodes: vec![bad_node],
            service_cidrs: vec![service_cidr(json!({"metadata": {"name": "sc"},
                "spec": {"cidrs": ["10.96.0.0/16", "nonsense"]}}))],
            ..Objects::default()
        };
        let s = Settings {
            detect_local_mode: DetectLocalMode::NodeCidr,
            masquerade_bit: 40,
            ..settings()
        };
        let (model, warnings) = build(&objs, &s);
        assert_warning(
            &warnings,
            "Node node-a",
            "status.addresses[0] (InternalIP) \"192.168.0.300\" is not an IP address",
        );
        assert_warning(
            &warnings,
            "Node node-a",
            "spec.podCIDRs[0] \"10.244.1.0/24x\" is not a CIDR",
        );
        assert_warning(
            &warnings,
            "ServiceCIDR sc",
            "spec.cidrs[1] \"nonsense\" is not a CIDR",
        );
        assert_warning(&warnings, "KubeProxyConfiguration", "masqueradeBit 40");
        assert_eq!(warnings.len(), 4, "{warnings:#?}");
        let v4 = family(&model, Family::V4);
        assert_eq!(v4.node_ip, Some(ip("192.168.0.10")));
        assert_eq!(v4.local_detect, LocalDetect::None);
        assert_eq!(v4.service_cidrs, vec![net("10.96.0.0/16")]);
        assert_eq!(v4.masquerade_mark, 1 << DEFAULT_MASQUERADE_BIT);
        assert_eq!(
            family(&model, Family::V6).local_detect,
            LocalDetect::SourceCidrs(vec![net("fd00:244:0:1::/64")])
        );
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
}
