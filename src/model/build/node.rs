//! The own Node and the node-level settings of each family.
//!
//! Owns: [`NodeFacts`], the one reading of the own Node object (whether it exists and may
//! serve, its addresses and primary IPs, pod CIDRs, zone) that `build`, `sync` (node
//! eligibility for `/healthz`) and `cli` (`trace`'s view of the host) all use; and the
//! derivation of each family's [`FamilySettings`] from it, the settings and the
//! ServiceCIDRs.
//!
//! Must not: validate settings (`config` did), or look at Services and EndpointSlices.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::ServiceCIDR;

use super::{
    label, net_family, normalize, parse_cidr, parse_ip, sort_unique, sorted_dedup, DetectLocalMode,
    NodePortAddresses, Settings, Warnings,
};
use crate::model::{
    Family, FamilySettings, LocalDetect, NodePortIps, Warning, LABEL_ZONE, TAINT_TO_BE_DELETED,
};

/// What the own Node object (the one named like the configured hostname) tells kproxy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The node exists and is not being deleted (nor tainted for deletion by the cluster
    /// autoscaler), as upstream's `/healthz` requires.
    pub eligible: bool,
    /// `(type, address)` of every `status.addresses` entry that is an IP address, in order.
    pub addresses: Vec<(String, IpAddr)>,
    /// `spec.podCIDRs` (or `spec.podCIDR`), parsed, in order.
    pub pod_cidrs: Vec<IpNetwork>,
    /// `topology.kubernetes.io/zone`, empty when unknown.
    pub zone: String,
}

impl NodeFacts {
    /// Reads the Node named `hostname` from `nodes` (what cannot be read is left out).
    pub fn of(nodes: &[Node], hostname: &str) -> NodeFacts {
        NodeFacts::read(nodes, hostname).0
    }

    /// As [`NodeFacts::of`], with a warning for each piece that could not be read (a
    /// missing or duplicated Node, an address or pod CIDR that does not parse).
    pub fn read(nodes: &[Node], hostname: &str) -> (NodeFacts, Vec<Warning>) {
        let object = format!("Node {hostname}");
        let mut warnings = Warnings::default();
        let named: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.metadata.name.as_deref() == Some(hostname))
            .collect();
        let eligible = named.iter().any(|n| not_leaving(n));
        let (kept, duplicates) = sort_unique(named.iter().map(|n| (hostname.to_string(), *n)));
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
            return (NodeFacts::default(), warnings.finish());
        };
        let facts = NodeFacts {
            eligible,
            addresses: read_addresses(node, &object, &mut warnings),
            pod_cidrs: read_pod_cidrs(node, &object, &mut warnings),
            zone: label(&node.metadata, LABEL_ZONE).unwrap_or("").to_string(),
        };
        (facts, warnings.finish())
    }

    /// The node's IPs: its InternalIP and ExternalIP addresses, in order.
    pub fn node_ips(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.addresses
            .iter()
            .filter(|(t, _)| is_node_ip_type(t))
            .map(|(_, ip)| *ip)
    }

    /// The first InternalIP of the family, else the first ExternalIP of it.
    pub fn primary_ip(&self, family: Family) -> Option<IpAddr> {
        ["InternalIP", "ExternalIP"].iter().find_map(|kind| {
            self.addresses
                .iter()
                .find(|(t, ip)| t == kind && family.contains(ip))
                .map(|(_, ip)| *ip)
        })
    }
}

fn is_node_ip_type(type_: &str) -> bool {
    type_ == "InternalIP" || type_ == "ExternalIP"
}

/// Neither being deleted nor tainted for deletion.
fn not_leaving(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_none()
        && !node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TAINT_TO_BE_DELETED))
}

/// Every address that parses; a node IP (InternalIP, ExternalIP) that does not is warned of.
fn read_addresses(node: &Node, object: &str, warnings: &mut Warnings) -> Vec<(String, IpAddr)> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or(&[]);
    let mut out = Vec::new();
    for (i, addr) in addresses.iter().enumerate() {
        match parse_ip(&addr.address) {
            Some(ip) => out.push((addr.type_.clone(), ip)),
            None if is_node_ip_type(&addr.type_) => warnings.push(
                object,
                format!(
                    "status.addresses[{i}] ({}) {:?} is not an IP address",
                    addr.type_, addr.address
                ),
            ),
            None => {}
        }
    }
    out
}

/// `spec.podCIDRs`, else `spec.podCIDR`.
fn read_pod_cidrs(node: &Node, object: &str, warnings: &mut Warnings) -> Vec<IpNetwork> {
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
    let mut out = Vec::new();
    for (i, cidr) in cidrs.iter().enumerate() {
        match parse_cidr(cidr) {
            Some(net) => out.push(net),
            None => {
                let at = if field == "spec.podCIDRs" {
                    format!("{field}[{i}]")
                } else {
                    field.to_string()
                };
                warnings.push(object, format!("{at} {cidr:?} is not a CIDR"));
            }
        }
    }
    out
}

/// The node-level settings of one family.
pub(super) fn family_settings(
    family: Family,
    settings: &Settings,
    node: &NodeFacts,
    service_cidrs: &[IpNetwork],
) -> FamilySettings {
    FamilySettings {
        family,
        node_ip: node.primary_ip(family),
        nodeport_ips: nodeport_ips(family, settings, node),
        local_detect: local_detect(family, settings, node),
        masquerade_all: settings.masquerade_all,
        masquerade_mark: settings.masquerade_mark,
        service_cidrs: service_cidrs
            .iter()
            .copied()
            .filter(|net| net_family(net) == family)
            .collect(),
    }
}

fn nodeport_ips(family: Family, settings: &Settings, node: &NodeFacts) -> NodePortIps {
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
                None => node.node_ips().collect(),
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

fn local_detect(family: Family, settings: &Settings, node: &NodeFacts) -> LocalDetect {
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

pub(super) fn collect_service_cidrs(
    objects: &[ServiceCIDR],
    warnings: &mut Warnings,
) -> Vec<IpNetwork> {
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
