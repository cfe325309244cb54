//! Review output: the model as a table a reviewer reads in seconds (`--output summary`)
//! and as JSON (`--output json`).
//!
//! Owns: presentation of the model and warnings; [`diff`] presents what a change does
//! (two models, or a transaction against what the kernel holds). Must not: compute
//! anything the model does not already say (which endpoints are used comes from `model`),
//! or use more than `model` and `nft`.

pub mod diff;
#[cfg(test)]
mod tests;

use std::fmt::Write;

use serde::Serialize;

use crate::model::{EndpointAddr, FamilyModel, Model, NodePortIps, ServicePort, Warning};
use crate::nft::{text, Ruleset};

/// `--output summary`: one block per service port, per family.
pub fn summary(model: &Model, warnings: &[Warning]) -> String {
    let mut out = String::new();
    for fm in &model.families {
        family_header(&mut out, fm);
        if fm.services.is_empty() {
            out.push_str("  (no service ports)\n");
        }
        for sp in &fm.services {
            service_block(&mut out, sp);
        }
        out.push('\n');
    }
    if !warnings.is_empty() {
        let _ = writeln!(out, "skipped input ({}):", warnings.len());
        for w in warnings {
            let _ = writeln!(out, "  {w}");
        }
    }
    out
}

fn family_header(out: &mut String, fm: &FamilyModel) {
    let _ = writeln!(
        out,
        "{} ({} service ports)  {}",
        family_name(fm),
        fm.services.len(),
        family_facts(fm)
    );
}

fn family_name(fm: &FamilyModel) -> &'static str {
    match fm.settings.family {
        crate::nft::Family::V4 => "IPv4",
        crate::nft::Family::V6 => "IPv6",
    }
}

/// `node IP …  NodePorts on …`: the node's facts of one family.
fn family_facts(fm: &FamilyModel) -> String {
    let node_ip = fm
        .settings
        .node_ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "none".into());
    let nodeports = match &fm.settings.nodeport_ips {
        NodePortIps::All => "all local addresses".to_string(),
        NodePortIps::Ips(v) if v.is_empty() => "none".to_string(),
        NodePortIps::Ips(v) => join(v),
    };
    format!("node IP {node_ip}  NodePorts on {nodeports}")
}

fn join<T: ToString>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn service_block(out: &mut String, sp: &ServicePort) {
    let _ = writeln!(out, "  {}", port_title(sp));
    for line in port_facts(sp) {
        let _ = writeln!(out, "    {line}");
    }
    if sp.endpoints.is_empty() {
        out.push_str("    endpoints: none\n");
    }
    for (_, line) in endpoint_lines(sp) {
        let _ = writeln!(out, "    {line}");
    }
}

/// `namespace/name:port (protocol)`.
fn port_title(sp: &ServicePort) -> String {
    format!("{} ({})", sp.name, sp.name.protocol)
}

/// The VIPs, policy and traffic lines of one service port (without indentation).
fn port_facts(sp: &ServicePort) -> Vec<String> {
    let mut vips = format!(
        "clusterIP {}",
        EndpointAddr {
            ip: sp.cluster_ip,
            port: sp.port
        }
    );
    if sp.node_port != 0 {
        let _ = write!(vips, "  nodePort {}", sp.node_port);
    }
    if !sp.external_ips.is_empty() {
        let _ = write!(vips, "  externalIPs {}", join(&sp.external_ips));
    }
    if !sp.load_balancer_ips.is_empty() {
        let _ = write!(vips, "  loadBalancer {}", join(&sp.load_balancer_ips));
        if !sp.source_ranges.is_empty() {
            let _ = write!(vips, " (from {})", join(&sp.source_ranges));
        }
    }
    let pol = |local: bool| if local { "Local" } else { "Cluster" };
    let mut line = format!("policy: internal {}", pol(sp.internal_policy_local));
    if sp.externally_accessible() {
        let _ = write!(line, ", external {}", pol(sp.external_policy_local));
    }
    match sp.affinity_timeout {
        Some(t) => {
            let _ = write!(line, "  affinity ClientIP {t}s");
        }
        None => line.push_str("  affinity none"),
    }
    if sp.health_check_node_port != 0 {
        let _ = write!(line, "  healthCheckNodePort {}", sp.health_check_node_port);
    }
    vec![vips, line, format!("traffic: {}", outcome(sp))]
}

/// One line per endpoint (address, node, state, whether this node uses it), with its
/// address, in the model's order.
fn endpoint_lines(sp: &ServicePort) -> Vec<(EndpointAddr, String)> {
    let mut lines = Vec::with_capacity(sp.endpoints.len());
    for ep in &sp.endpoints {
        let addr = ep.addr();
        let node = match (&ep.node, ep.local) {
            (Some(n), true) => format!("{n} (local)"),
            (Some(n), false) => n.clone(),
            (None, _) => "-".into(),
        };
        let state = if ep.ready {
            "ready"
        } else if ep.serving && ep.terminating {
            "serving,terminating"
        } else if ep.terminating {
            "terminating"
        } else {
            "not-ready"
        };
        let mut used = Vec::new();
        if sp.cluster_endpoints.contains(&addr) {
            used.push("cluster");
        }
        if sp.local_endpoints.contains(&addr) {
            used.push("local");
        }
        let used = if used.is_empty() {
            "unused".to_string()
        } else {
            format!("used: {}", used.join("+"))
        };
        let line = format!(
            "- {:<28} {:<18} {:<20} {used}",
            addr.to_string(),
            node,
            state
        );
        lines.push((addr, line));
    }
    lines
}

/// One line saying where internal and external traffic goes.
fn outcome(sp: &ServicePort) -> String {
    let list = |eps: &[EndpointAddr], none: &str| -> String {
        if eps.is_empty() {
            none.to_string()
        } else {
            format!("{} endpoint(s)", eps.len())
        }
    };
    if !sp.has_endpoints {
        return "no usable endpoints: rejected".into();
    }
    let internal = list(sp.internal_endpoints(), "dropped (no local endpoints)");
    if !sp.externally_accessible() {
        return format!("ClusterIP → {internal}");
    }
    let external = list(
        sp.external_endpoints(),
        "dropped from outside (no local endpoints)",
    );
    format!("ClusterIP → {internal}; external → {external}")
}

/// `--output json`: the model, the warnings and the exact ruleset text.
pub fn json(model: &Model, warnings: &[Warning], ruleset: &Ruleset) -> serde_json::Value {
    #[derive(Serialize)]
    struct Out<'a> {
        families: &'a [FamilyModel],
        warnings: &'a [Warning],
        ruleset: String,
    }
    serde_json::to_value(Out {
        families: &model.families,
        warnings,
        ruleset: text::ruleset(ruleset),
    })
    .expect("model serialises")
}
