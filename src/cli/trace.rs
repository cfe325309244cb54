//! `kproxy trace`: where the first packet of a new connection goes through the rendered
//! rules.
//!
//! Owns: the trace command's arguments, classifying `--from`, and its output. Must not:
//! evaluate rules itself ([`crate::trace`] does).

use std::net::IpAddr;

use clap::{Args, ValueEnum};

use super::input::{prepare, Input};
use super::{usage, Failure};
use crate::config::Config;
use crate::model::{self, build::Objects, Family, Protocol};
use crate::trace::{self, Host, Origin, Probe};

#[derive(Args, Debug)]
pub(crate) struct TraceArgs {
    #[command(flatten)]
    input: Input,
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

pub(crate) fn cmd_trace(a: TraceArgs) -> Result<(), Failure> {
    let (dst, port, proto) = parse_destination(&a.to).map_err(|e| usage(format!("--to: {e}")))?;
    let family = Family::of(&dst);
    let p = prepare(&a.input)?;
    let (mut local_addrs, pod_cidrs) = node_facts(&p.config, &p.objects);
    let fm = p.model.family(family);
    if let Some(ip) = fm.and_then(|f| f.settings.node_ip) {
        local_addrs.push(ip);
    }
    local_addrs.sort();
    local_addrs.dedup();
    let (origin, src) = if a.from == "node" {
        let src = fm.and_then(|f| f.settings.node_ip).ok_or_else(|| {
            usage(format!(
                "--from node: the node has no {} address; give --from ADDR",
                if family == Family::V4 { "IPv4" } else { "IPv6" }
            ))
        })?;
        (Origin::Node, src)
    } else {
        let src: IpAddr = a.from.parse().map_err(|_| {
            usage(format!(
                "--from: {:?} is not an IP address or `node`",
                a.from
            ))
        })?;
        if Family::of(&src) != family {
            return Err(usage("--from and --to must be of the same IP family"));
        }
        if pod_cidrs.iter().any(|c| c.contains(src)) {
            let s = &p.config.settings;
            let iif = a.iif.clone().unwrap_or_else(|| match s.detect_local_mode {
                model::build::DetectLocalMode::BridgeInterface => s.bridge_interface.clone(),
                model::build::DetectLocalMode::InterfaceNamePrefix => {
                    format!("{}0", s.interface_name_prefix)
                }
                _ => "cni0".into(),
            });
            (Origin::Pod { iifname: iif }, src)
        } else {
            let iif = a.iif.clone().unwrap_or_else(|| "eth0".into());
            (Origin::External { iifname: iif }, src)
        }
    };
    let probe = Probe {
        origin,
        src,
        dst,
        proto,
        port,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(
            parse_destination("10.96.0.10:53/udp").unwrap(),
            ("10.96.0.10".parse().unwrap(), 53, Protocol::Udp)
        );
        assert_eq!(
            parse_destination("[fd00::10]:80").unwrap(),
            ("fd00::10".parse().unwrap(), 80, Protocol::Tcp)
        );
        assert!(parse_destination("10.96.0.10:53/icmp").is_err());
        assert!(parse_destination("10.96.0.10").is_err());
        assert!(parse_destination("10.96.0.10:70000/tcp").is_err());
    }
}
