//! `kproxy trace`: where the first packet of a new connection goes through the rendered
//! rules, or (`--node`) through what this node's kernel holds now, compared with the
//! render when objects are given too.
//!
//! Owns: the trace command's arguments, classifying `--from`, and its output; `node` the
//! host facts and the kernel read-back of `--node`. Must not: evaluate rules itself
//! ([`crate::trace`] does) or change the kernel.

use std::net::IpAddr;

use clap::{Args, ValueEnum};

use super::input::{prepare, Input};
use super::{usage, Failure};
use crate::config::Config;
use crate::model::{self, build::Objects, Family, Protocol};
use crate::trace::{self, Host, Origin, Probe, Trace};

mod node;
#[cfg(test)]
mod tests;

// `-f` is optional here: `--node` traces the kernel's rules without objects (checked in
// `cmd_trace`).
#[derive(Args, Debug)]
pub(crate) struct TraceArgs {
    #[command(flatten)]
    input: Input,
    /// Trace through what this node's kernel holds now (kproxy's tables read back), with
    /// the host's own addresses and routes. With objects (-f) too, also trace their render
    /// and say where the two differ.
    #[arg(long)]
    node: bool,
    /// The client: `node` (a process on the node, using its primary address) or an IP
    /// address (a pod on this node if inside the node's pod CIDRs, else an outside client).
    #[arg(long, value_name = "ADDR|node")]
    from: String,
    /// Destination `ADDR:PORT/PROTO` (IPv6 as `[ADDR]:PORT/PROTO`; PROTO defaults to tcp).
    #[arg(long, value_name = "ADDR:PORT/PROTO")]
    to: String,
    /// Interface the packet arrives on (default: a pod interface for pod sources, eth0
    /// otherwise).
    #[arg(long, value_name = "NAME")]
    iif: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = TraceOutput::Text)]
    output: TraceOutput,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum TraceOutput {
    Text,
    Json,
}

/// Parses `ADDR:PORT[/PROTO]` and `[V6ADDR]:PORT[/PROTO]`.
pub fn parse_destination(s: &str) -> Result<(IpAddr, u16, Protocol), String> {
    let (hostport, proto) = match s.rsplit_once('/') {
        Some((hp, p)) => (
            hp,
            Protocol::parse(p).ok_or_else(|| format!("unknown protocol {p:?} (tcp, udp, sctp)"))?,
        ),
        None => (s, Protocol::Tcp),
    };
    let sa: std::net::SocketAddr = hostport
        .parse()
        .map_err(|_| format!("{hostport:?} is not ADDR:PORT (IPv6: [ADDR]:PORT)"))?;
    Ok((sa.ip(), sa.port(), proto))
}

/// The node object's addresses and pod CIDRs (for `--from` classification and `fib`).
fn node_facts(config: &Config, objects: &Objects) -> (Vec<IpAddr>, Vec<ipnetwork::IpNetwork>) {
    let node = model::NodeFacts::of(&objects.nodes, &config.settings.hostname);
    let mut addrs: Vec<IpAddr> = node.addresses.iter().map(|(_, ip)| *ip).collect();
    if let Some(local) = &config.settings.local_addresses {
        addrs.extend(local.iter().copied());
    }
    (addrs, node.pod_cidrs)
}

/// Whether `trace --node` also has objects to render and compare with the kernel:
/// manifests, or a live cluster named explicitly (`--kubeconfig`, `--context`,
/// `--config-from-cluster`); without any, it traces the kernel's rules alone.
fn has_objects(input: &Input) -> bool {
    !input.files.is_empty()
        || input.proxy.kubeconfig.is_some()
        || input.context.is_some()
        || input.config_from_cluster.is_some()
}

/// The probe from `--from` to `to`: `node` (its source is `node_ip`), or an address whose
/// arrival (`(is a pod, input interface)`) `arrival` tells.
fn classify(
    from: &str,
    to: (IpAddr, u16, Protocol),
    node_ip: Option<IpAddr>,
    arrival: impl Fn(IpAddr) -> (bool, String),
) -> Result<Probe, Failure> {
    let (dst, port, proto) = to;
    let family = Family::of(&dst);
    let probe = |origin, src| Probe {
        origin,
        src,
        dst,
        proto,
        port,
    };
    if from == "node" {
        let src = node_ip.ok_or_else(|| {
            usage(format!(
                "--from node: the node has no {} address; give --from ADDR",
                if family == Family::V4 { "IPv4" } else { "IPv6" }
            ))
        })?;
        return Ok(probe(Origin::Node, src));
    }
    let src: IpAddr = from
        .parse()
        .map_err(|_| usage(format!("--from: {from:?} is not an IP address or `node`")))?;
    if Family::of(&src) != family {
        return Err(usage("--from and --to must be of the same IP family"));
    }
    let (pod, iifname) = arrival(src);
    let origin = if pod {
        Origin::Pod { iifname }
    } else {
        Origin::External { iifname }
    };
    Ok(probe(origin, src))
}

pub(crate) fn cmd_trace(a: TraceArgs) -> Result<(), Failure> {
    let (dst, port, proto) = parse_destination(&a.to).map_err(|e| usage(format!("--to: {e}")))?;
    if a.node {
        return cmd_trace_node(&a, dst, port, proto);
    }
    // Without -f the objects come from the live cluster (no cluster configured: exit 64).
    let family = Family::of(&dst);
    let p = prepare(&a.input)?;
    let (mut local_addrs, pod_cidrs) = node_facts(&p.config, &p.objects);
    let fm = p.model.family(family);
    if let Some(ip) = fm.and_then(|f| f.settings.node_ip) {
        local_addrs.push(ip);
    }
    local_addrs.sort();
    local_addrs.dedup();
    let node_ip = fm.and_then(|f| f.settings.node_ip);
    let probe = classify(&a.from, (dst, port, proto), node_ip, |src| {
        if pod_cidrs.iter().any(|c| c.contains(src)) {
            let s = &p.config.settings;
            let iif = a.iif.clone().unwrap_or_else(|| match s.detect_local_mode {
                model::build::DetectLocalMode::BridgeInterface => s.bridge_interface.clone(),
                model::build::DetectLocalMode::InterfaceNamePrefix => {
                    format!("{}0", s.interface_name_prefix)
                }
                _ => "cni0".into(),
            });
            (true, iif)
        } else {
            (false, a.iif.clone().unwrap_or_else(|| "eth0".into()))
        }
    })?;
    let host = Host { local_addrs };
    let t = trace::trace(&p.ruleset, &host, &probe);
    match a.output {
        TraceOutput::Text => print!("{}", t.render_text(&probe)),
        TraceOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&t.to_json()).expect("json")
        ),
    }
    Ok(())
}

/// `--node`: the kernel's rules with the host's facts; with objects, their render too.
fn cmd_trace_node(a: &TraceArgs, dst: IpAddr, port: u16, proto: Protocol) -> Result<(), Failure> {
    let family = Family::of(&dst);
    let kernel = node::kernel_ruleset()?;
    if kernel.table(family).is_none() {
        eprintln!(
            "warning: this node's kernel holds no {} kproxy table (is kproxy running here?)",
            if family == Family::V4 { "ip" } else { "ip6" }
        );
    }
    let prepared = if has_objects(&a.input) {
        Some(prepare(&a.input)?)
    } else {
        None
    };
    let local_addrs = crate::app::local_addresses();
    let node_ip = node::node_source(dst, port)
        .or_else(|| {
            let p = prepared.as_ref()?;
            p.model.family(family)?.settings.node_ip
        })
        .or_else(|| {
            let mut own = local_addrs.iter().filter(|ip| !ip.is_loopback());
            own.find(|ip| Family::of(ip) == family).copied()
        });
    let pods = node::PodNetwork::of(&kernel, family);
    let object_pods = prepared
        .as_ref()
        .map(|p| node_facts(&p.config, &p.objects).1)
        .unwrap_or_default();
    let probe = classify(&a.from, (dst, port, proto), node_ip, |src| {
        let iif = a.iif.clone().or_else(|| node::route_iif(src));
        let iif = iif.unwrap_or_else(|| "eth0".into());
        let pod = object_pods.iter().any(|c| c.contains(src)) || pods.contains(src, &iif);
        (pod, iif)
    })?;
    let host = Host { local_addrs };
    let k = trace::trace(&kernel, &host, &probe);
    let r = prepared.map(|p| trace::trace(&p.ruleset, &host, &probe));
    match a.output {
        TraceOutput::Text => print!("{}", node_text(&probe, &k, r.as_ref())),
        TraceOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&node_json(&host, &k, r.as_ref())).expect("json")
        ),
    }
    Ok(())
}

/// The kernel's trace in full; with a render, its verdict and whether the two agree (the
/// render's paths in full when they do not).
fn node_text(probe: &Probe, kernel: &Trace, rendered: Option<&Trace>) -> String {
    let mut out = String::from("kernel: kproxy's rules on this node, read back now\n");
    out.push_str(&kernel.render_text(probe));
    let Some(r) = rendered else {
        return out;
    };
    let diffs = node::differences(kernel, r);
    out.push_str("\nrender: the given objects' rules for this node\n");
    if diffs.is_empty() {
        out.push_str(verdict_line(&r.render_text(probe)));
        out.push_str("\nthe kernel and the render agree (verdict, endpoints, masquerade)\n");
    } else {
        out.push_str(&r.render_text(probe));
        out.push_str("\nDIFFERENT: this node's kernel does not hold what the objects render:\n");
        for d in &diffs {
            out.push_str(&format!("  {d}\n"));
        }
    }
    out
}

fn verdict_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| l.starts_with("verdict:"))
        .unwrap_or("")
}

/// `{"source": "node", "local_addrs", "kernel": trace, "rendered": trace | null,
/// "agree": bool | null, "differences": [text]}`.
fn node_json(host: &Host, kernel: &Trace, rendered: Option<&Trace>) -> serde_json::Value {
    let diffs = rendered.map(|r| node::differences(kernel, r));
    serde_json::json!({
        "source": "node",
        "local_addrs": host.local_addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
        "kernel": kernel.to_json(),
        "rendered": rendered.map(|r| r.to_json()),
        "agree": diffs.as_ref().map(|d| d.is_empty()),
        "differences": diffs.unwrap_or_default(),
    })
}
