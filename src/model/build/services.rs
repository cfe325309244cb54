//! Services → service ports.
//!
//! Owns: which Services kproxy proxies, each one's validated, family-independent form
//! ([`Svc`]: cluster IPs, ports, external and load-balancer IPs, source ranges, affinity,
//! traffic policies), and, per family, the [`ServicePort`]s made of a Service and the
//! endpoints [`slices`](super::slices) collected for it.
//!
//! Must not: read EndpointSlices or the Node (both arrive already interpreted).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use super::node::NodeFacts;
use super::select::categorize_endpoints;
use super::slices::AllEndpoints;
use super::{
    dns1123_label, for_other_proxy, namespace_of, net_family, parse_cidr, parse_ip, sorted_dedup,
    unique_by_name, valid_port, Settings, Warnings,
};
use crate::model::{
    Endpoint, Family, Protocol, ServiceKey, ServicePort, ServicePortName, DEFAULT_AFFINITY_TIMEOUT,
};
use crate::nft::PICK_SPACE;

/// Largest `sessionAffinityConfig.clientIP.timeoutSeconds` the API accepts (one day).
const MAX_AFFINITY_TIMEOUT: i32 = 86_400;

/// One usable `spec.ports[]` entry.
pub(super) struct SvcPort {
    pub(super) name: String,
    pub(super) protocol: Protocol,
    port: u16,
    node_port: u16,
}

/// A Service we proxy, validated, family-independent.
pub(super) struct Svc {
    namespace: String,
    name: String,
    /// Valid cluster IPs, at most one per family.
    cluster_ips: Vec<IpAddr>,
    pub(super) ports: Vec<SvcPort>,
    external_ips: Vec<IpAddr>,
    load_balancer_ips: Vec<IpAddr>,
    source_ranges: Vec<IpNetwork>,
    affinity_timeout: Option<u32>,
    external_policy_local: bool,
    internal_policy_local: bool,
    health_check_node_port: u16,
}

/// The services we proxy, and the names of every Service object (proxied or not).
pub(super) struct Services {
    pub(super) proxied: BTreeMap<ServiceKey, Svc>,
    pub(super) existing: BTreeSet<ServiceKey>,
}

pub(super) fn collect_services(
    objects: &[Service],
    settings: &Settings,
    warnings: &mut Warnings,
) -> Services {
    let kept = unique_by_name("Service", objects, |svc| &svc.metadata, warnings);
    let existing = kept
        .iter()
        .map(|(_, svc)| {
            let name = svc.metadata.name.clone().unwrap_or_default();
            ServiceKey::new(namespace_of(&svc.metadata), name)
        })
        .collect();
    let proxied = kept
        .into_iter()
        .filter_map(|(_, svc)| parse_service(svc, settings, warnings))
        .map(|svc| {
            (
                ServiceKey::new(svc.namespace.clone(), svc.name.clone()),
                svc,
            )
        })
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
    let cluster_ips = cluster_ips(spec, &mut warn)?;
    let ports = service_ports(spec, &mut warn);
    let external_ips = external_ips(spec, &mut warn);
    let load_balancer_ips = load_balancer_ips(svc, &mut warn);
    let source_ranges = source_ranges(spec, &mut warn);
    let affinity_timeout = affinity_timeout(spec, &mut warn);
    let (external_policy_local, internal_policy_local, health_check_node_port) =
        traffic_policies(type_, spec, &mut warn);

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

/// Cluster IPs: `spec.clusterIPs` (falling back to `spec.clusterIP`), at most one per
/// family. `None` for a headless Service ("None") or one without a usable cluster IP.
fn cluster_ips(spec: &ServiceSpec, warn: &mut impl FnMut(String)) -> Option<Vec<IpAddr>> {
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

    Some(cluster_ips)
}

/// The usable `spec.ports[]` entries (bad or duplicate ones are warned of and skipped). A
/// Service without ports (the API requires one unless it is headless) gets no rules: its
/// ClusterIP is then dropped as unallocated, which a warning explains.
fn service_ports(spec: &ServiceSpec, warn: &mut impl FnMut(String)) -> Vec<SvcPort> {
    if spec.ports.as_deref().is_none_or(<[_]>::is_empty) {
        warn("spec.ports is empty: no rules for this Service".to_string());
    }
    let mut ports: Vec<SvcPort> = Vec::new();
    for (i, p) in spec.ports.as_deref().unwrap_or(&[]).iter().enumerate() {
        let port_name = p.name.clone().unwrap_or_default();
        if !port_name.is_empty() && !dns1123_label(&port_name) {
            warn(format!(
                "spec.ports[{i}].name {port_name:?} is not a valid port name (a DNS-1123 \
                 label: at most 63 of a-z, 0-9 and '-'); port ignored"
            ));
            continue;
        }
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

    ports
}

/// `spec.externalIPs` that parse.
fn external_ips(spec: &ServiceSpec, warn: &mut impl FnMut(String)) -> Vec<IpAddr> {
    let mut external_ips = Vec::new();
    for (i, raw) in spec
        .external_ips
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        match parse_ip(raw) {
            Some(ip) => external_ips.push(ip),
            None => warn(format!(
                "spec.externalIPs[{i}] {raw:?} is not an IP address"
            )),
        }
    }

    external_ips
}

/// `status.loadBalancer.ingress[].ip` of VIP-style load balancers.
fn load_balancer_ips(svc: &Service, warn: &mut impl FnMut(String)) -> Vec<IpAddr> {
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
        match ing.ip_mode.as_deref() {
            None | Some("VIP") => {}
            Some("Proxy") => continue,
            Some(other) => {
                warn(format!(
                    "status.loadBalancer.ingress[{i}].ipMode {other:?} is not VIP or Proxy; \
                     ignored"
                ));
                continue;
            }
        }
        match parse_ip(raw) {
            Some(ip) => load_balancer_ips.push(ip),
            None => warn(format!(
                "status.loadBalancer.ingress[{i}].ip {raw:?} is not an IP address"
            )),
        }
    }

    load_balancer_ips
}

/// `spec.loadBalancerSourceRanges` that parse.
fn source_ranges(spec: &ServiceSpec, warn: &mut impl FnMut(String)) -> Vec<IpNetwork> {
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

    source_ranges
}

/// Session affinity ClientIP → its timeout (default or out of range: 3 hours).
fn affinity_timeout(spec: &ServiceSpec, warn: &mut impl FnMut(String)) -> Option<u32> {
    match spec.session_affinity.as_deref() {
        None | Some("" | "None" | "ClientIP") => {}
        Some(other) => warn(format!(
            "spec.sessionAffinity {other:?} is not ClientIP or None; no affinity"
        )),
    }
    if spec.session_affinity.as_deref() == Some("ClientIP") {
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
    }
}

/// `(external policy Local, internal policy Local, healthCheckNodePort)`.
///
/// pkg/api/v1/service/util.go: ExternallyAccessible / ExternalPolicyLocal /
/// NeedsHealthCheck.
fn traffic_policies(
    type_: &str,
    spec: &ServiceSpec,
    warn: &mut impl FnMut(String),
) -> (bool, bool, u16) {
    let raw_external = spec.external_ips.as_deref().unwrap_or(&[]);
    let externally_accessible = matches!(type_, "NodePort" | "LoadBalancer")
        || (type_ == "ClusterIP" && !raw_external.is_empty());
    let mut local = |field: &str, value: Option<&str>| match value {
        None | Some("" | "Cluster") => false,
        Some("Local") => true,
        Some(other) => {
            warn(format!(
                "spec.{field} {other:?} is not Cluster or Local; using Cluster"
            ));
            false
        }
    };
    let external_local = local(
        "externalTrafficPolicy",
        spec.external_traffic_policy.as_deref(),
    );
    let internal_policy_local = local(
        "internalTrafficPolicy",
        spec.internal_traffic_policy.as_deref(),
    );
    let external_policy_local = externally_accessible && external_local;
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
    (
        external_policy_local,
        internal_policy_local,
        health_check_node_port,
    )
}

// ---------------------------------------------------------------------------------------
// Service ports of one family
// ---------------------------------------------------------------------------------------

/// Most endpoints one list (a port's Cluster or Local endpoints) can use: the rules pick
/// among [`PICK_SPACE`] slots, one endpoint at least per slot.
const MAX_LIST_ENDPOINTS: usize = PICK_SPACE as usize;

/// Keeps the first [`MAX_LIST_ENDPOINTS`] endpoints of a longer list (the rest could get
/// no traffic), with a warning naming the Service.
fn cap_lists(sp: &mut ServicePort, warnings: &mut Warnings) {
    let object = format!("Service {}/{}", sp.name.namespace, sp.name.name);
    let port = sp.name.clone();
    for (list, policy) in [
        (&mut sp.cluster_endpoints, "Cluster"),
        (&mut sp.local_endpoints, "Local"),
    ] {
        if list.len() > MAX_LIST_ENDPOINTS {
            warnings.push(
                &object,
                format!(
                    "{port} has {} {policy}-policy endpoints, more than the \
                     {MAX_LIST_ENDPOINTS} one port can use; the first {MAX_LIST_ENDPOINTS} \
                     are used",
                    list.len()
                ),
            );
            list.truncate(MAX_LIST_ENDPOINTS);
        }
    }
}

pub(super) fn family_services(
    family: Family,
    services: &Services,
    endpoints: &AllEndpoints,
    settings: &Settings,
    node: &NodeFacts,
    warnings: &mut Warnings,
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
            cap_lists(&mut sp, warnings);
            out.push(sp);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
