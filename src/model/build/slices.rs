//! EndpointSlices → endpoints of each service port.
//!
//! Owns: which EndpointSlices count (address type, the `kubernetes.io/service-name` join,
//! slice ports matched to service ports by name and protocol), reading each endpoint
//! (first address, conditions with upstream's defaults, hints, locality), and merging the
//! same IP:port listed in several slices.
//!
//! Must not: choose which endpoints a port uses ([`select`](super::select) does).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::services::{Services, Svc};
use super::{
    for_other_proxy, label, namespace_of, parse_ip, sorted_dedup, unique_by_name, valid_port,
    Settings, Warnings,
};
use crate::model::{Endpoint, Family, Protocol, ServiceKey, LABEL_HEADLESS, LABEL_SERVICE_NAME};

/// Endpoints of one service port (any family), keyed by address.
type EndpointSet = BTreeMap<(IpAddr, u16), Endpoint>;
/// Endpoints of a service, by (port name, protocol).
type ServiceEndpoints = BTreeMap<(String, Protocol), EndpointSet>;
/// Endpoints of every service, by (namespace, name).
pub(super) type AllEndpoints = BTreeMap<ServiceKey, ServiceEndpoints>;

/// A slice port that names a port of the Service: `((name, protocol), target port)`.
type SlicePort = ((String, Protocol), u16);

pub(super) fn collect_endpoints(
    slices: &[EndpointSlice],
    settings: &Settings,
    services: &Services,
    warnings: &mut Warnings,
) -> AllEndpoints {
    let kept = unique_by_name("EndpointSlice", slices, |slice| &slice.metadata, warnings);
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
    let Some((family, service_key, svc)) = slice_target(slice, settings, services, &mut warn)
    else {
        return;
    };
    let ports = slice_ports(slice, &service_key, svc, &mut warn);
    let endpoints = slice_endpoints(slice, family, settings, &mut warn);
    merge(all.entry(service_key).or_default(), ports, &endpoints);
}

/// The slice's family and the Service it belongs to, when the slice counts and that
/// Service is proxied.
fn slice_target<'s>(
    slice: &EndpointSlice,
    settings: &Settings,
    services: &'s Services,
    warn: &mut impl FnMut(String),
) -> Option<(Family, ServiceKey, &'s Svc)> {
    let meta = &slice.metadata;
    if label(meta, LABEL_HEADLESS).is_some() || for_other_proxy(meta, settings) {
        return None;
    }
    let family = match slice.address_type.as_str() {
        "IPv4" => Family::V4,
        "IPv6" => Family::V6,
        "FQDN" => return None,
        other => {
            warn(format!(
                "addressType {other:?} is not IPv4, IPv6 or FQDN; ignored"
            ));
            return None;
        }
    };
    let Some(service_name) = label(meta, LABEL_SERVICE_NAME).filter(|n| !n.is_empty()) else {
        warn(format!("has no {LABEL_SERVICE_NAME} label; ignored"));
        return None;
    };
    let namespace = namespace_of(meta).to_string();
    let service_key = ServiceKey::new(namespace.clone(), service_name);
    if !services.existing.contains(&service_key) {
        warn(format!(
            "Service {namespace}/{service_name} (label {LABEL_SERVICE_NAME}) does not exist; \
             ignored"
        ));
        return None;
    }
    // None: a Service we do not proxy (ExternalName, headless, another proxy's, ...).
    let svc = services.proxied.get(&service_key)?;
    Some((family, service_key, svc))
}

/// Slice ports that name a port of the Service.
fn slice_ports(
    slice: &EndpointSlice,
    ServiceKey {
        namespace,
        name: service_name,
    }: &ServiceKey,
    svc: &Svc,
    warn: &mut impl FnMut(String),
) -> Vec<SlicePort> {
    let mut ports: Vec<SlicePort> = Vec::new();
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

    ports
}

/// The slice's endpoints (port 0 until merged per port). Upstream reads only the first
/// address of each.
fn slice_endpoints(
    slice: &EndpointSlice,
    family: Family,
    settings: &Settings,
    warn: &mut impl FnMut(String),
) -> Vec<Endpoint> {
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

    endpoints
}

/// Adds the endpoints under each matched port of the Service.
fn merge(svc_endpoints: &mut ServiceEndpoints, ports: Vec<SlicePort>, endpoints: &[Endpoint]) {
    for (port_key, number) in ports {
        let set = svc_endpoints.entry(port_key).or_default();
        for ep in endpoints {
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
