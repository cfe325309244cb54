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
//! Owns: the [`build`] entry point (the order of the steps), the warning list and the small
//! parsers the steps share. The steps, one file each: `input` (what a build reads:
//! [`Objects`], [`Settings`]), `node` (the own Node, [`NodeFacts`], and each family's
//! node-level settings), `services` (Services → service ports), `slices` (EndpointSlices →
//! endpoints), `select` (which endpoints each port uses).
//!
//! Must not: validate settings (`config` did: the masquerade bit arrives as its mark), do
//! I/O or know nftables.
//!
//! Bad input never stops the build: the offending piece is skipped and a [`Warning`] names
//! the object and the reason. The result does not depend on the order of the objects.
//! Names are checked as the API server checks them (namespaces and port names DNS-1123
//! labels, Service names DNS-1035 labels, EndpointSlice names DNS-1123 subdomains), since
//! manifests never went through it and names end up in chain names and comments.

mod input;
mod node;
mod select;
mod services;
mod slices;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use input::{DetectLocalMode, NodePortAddresses, Objects, Settings};
pub use node::NodeFacts;
pub use select::categorize_endpoints;

use super::{Family, FamilyModel, Model, Warning, LABEL_SERVICE_PROXY_NAME};
use node::{collect_service_cidrs, family_settings};
use services::{collect_services, family_services};
use slices::collect_endpoints;

/// Both families, in model order.
const FAMILIES: [Family; 2] = [Family::V4, Family::V6];
/// Namespace of objects that do not name one (as `kubectl apply` would place them).
const DEFAULT_NAMESPACE: &str = "default";

/// Builds the model for both families (IPv4 first, then IPv6; both always present).
pub fn build(objects: &Objects, settings: &Settings) -> (Model, Vec<Warning>) {
    let mut warnings = Warnings::default();

    let (node, node_warnings) = NodeFacts::read(&objects.nodes, &settings.hostname);
    warnings.0.extend(node_warnings);
    let service_cidrs = collect_service_cidrs(&objects.service_cidrs, &mut warnings);
    let services = collect_services(&objects.services, settings, &mut warnings);
    let endpoints = collect_endpoints(&objects.slices, settings, &services, &mut warnings);

    let families = FAMILIES
        .iter()
        .map(|&family| FamilyModel {
            settings: family_settings(family, settings, &node, &service_cidrs),
            services: family_services(
                family,
                &services,
                &endpoints,
                settings,
                &node,
                &mut warnings,
            ),
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

/// A DNS-1123 label (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters): what the
/// API server requires of namespaces and port names.
fn dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    let end = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len())
        && b.iter().all(inner)
        && b.first().is_some_and(end)
        && b.last().is_some_and(end)
}

/// A DNS-1035 label (a DNS-1123 label starting with a letter): what the API server
/// requires of Service names.
fn dns1035_label(s: &str) -> bool {
    dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// A DNS-1123 subdomain (dot-separated DNS-1123 labels, at most 253 characters): what the
/// API server requires of most object names, EndpointSlices' among them.
fn dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns1123_label)
}

/// Why a namespaced object's name or namespace cannot be used (the API server would have
/// refused the object; names go into nftables chain names and comments), or `None`.
fn invalid_name(kind: &str, namespace: &str, name: &str) -> Option<String> {
    if !dns1123_label(namespace) {
        return Some(format!(
            "metadata.namespace {namespace:?} is not a valid namespace (a DNS-1123 label: at \
             most 63 of a-z, 0-9 and '-'); ignored"
        ));
    }
    let (valid, what) = match kind {
        "Service" => (
            dns1035_label(name),
            "a DNS-1035 label: at most 63 of a-z, 0-9 and '-', starting with a letter",
        ),
        _ => (
            dns1123_subdomain(name),
            "a DNS-1123 subdomain: at most 253 of a-z, 0-9, '-' and '.'",
        ),
    };
    (!valid).then(|| format!("metadata.name {name:?} is not a valid {kind} name ({what}); ignored"))
}

/// Namespaced objects of one kind (`Service`, `EndpointSlice`) with their key
/// (`namespace/name`), in key order, one per key: an object without a name or with a name
/// or namespace the API server would refuse, and each key held by several objects, is
/// warned of.
fn unique_by_name<'a, T: serde::Serialize>(
    kind: &str,
    objects: &'a [T],
    meta: impl Fn(&T) -> &ObjectMeta,
    warnings: &mut Warnings,
) -> Keyed<'a, T> {
    let mut named = Vec::new();
    for object in objects {
        let namespace = namespace_of(meta(object));
        match meta(object).name.as_deref() {
            Some(name) if !name.is_empty() => match invalid_name(kind, namespace, name) {
                None => named.push((format!("{namespace}/{name}"), object)),
                Some(reason) => warnings.push(&format!("{kind} {namespace}/{name}"), reason),
            },
            _ => warnings.push(
                &format!("{kind} {namespace}/"),
                "metadata.name is missing; ignored",
            ),
        }
    }
    let (kept, duplicates) = sort_unique(named);
    for (key, count) in duplicates {
        warnings.push(
            &format!("{kind} {key}"),
            format!("{count} {kind} objects have this name; using one of them"),
        );
    }
    kept
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
