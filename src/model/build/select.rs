//! Endpoint selection: which endpoints each service port uses.
//!
//! Owns: upstream's `CategorizeEndpoints` (`topology.go`): ready endpoints, else serving
//! and terminating ones, decided separately for the Cluster and the Local list; topology
//! hints (node hints, then zone hints) narrowing only the Cluster list.
//!
//! Must not: read Kubernetes objects (it works on [`ServicePort`]s already built).

use super::sorted_dedup;
use crate::model::{Endpoint, EndpointAddr, ServicePort};

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
