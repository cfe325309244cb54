//! `kproxy trace --node`: what this node's kernel holds now, and what the host says about
//! the probe (its local addresses, the interface a client's packets arrive on, the source
//! a process on the node would use, which sources are pods).
//!
//! Owns: reading kproxy's tables back, the host facts the tracer needs (from
//! `getifaddrs`, `/proc/net/route`, `/proc/net/ipv6_route` and the kernel's source
//! address choice), the pod network as the ruleset's local-traffic detector states it,
//! and comparing the kernel's trace with the render's. Must not: change anything (it
//! only reads the kernel and the host).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use ipnetwork::IpNetwork;

use super::super::{Failure, EXIT_KERNEL};
use crate::backend::netlink::NetlinkBackend;
use crate::backend::Backend;
use crate::model::{EndpointAddr, Family};
use crate::nft::{CmpOp, Field, Ruleset, Stmt, Value};
use crate::render;
use crate::trace::Trace;

/// kproxy's tables as the kernel holds them now (both families).
pub(super) fn kernel_ruleset() -> Result<Ruleset, Failure> {
    let fail = |e: crate::backend::BackendError| Failure {
        code: EXIT_KERNEL,
        message: format!("reading kproxy's tables from the kernel: {e}"),
    };
    NetlinkBackend::new(render::TABLE)
        .map_err(fail)?
        .dump()
        .map_err(fail)
}

/// The interface the host routes `ip` out of (main routing table, longest prefix, then
/// lowest metric): where a packet from `ip` arrives. `None` without a route.
pub(super) fn route_iif(ip: IpAddr) -> Option<String> {
    let (path, parse): (&str, fn(&str) -> Option<Route>) = match ip {
        IpAddr::V4(_) => ("/proc/net/route", parse_route_v4),
        IpAddr::V6(_) => ("/proc/net/ipv6_route", parse_route_v6),
    };
    let text = std::fs::read_to_string(path).ok()?;
    best_route(text.lines().filter_map(parse), ip)
}

/// One route: destination, metric, interface.
#[derive(Debug, PartialEq)]
pub(super) struct Route {
    pub(super) dst: IpNetwork,
    pub(super) metric: u32,
    pub(super) iface: String,
}

pub(super) fn best_route(routes: impl Iterator<Item = Route>, ip: IpAddr) -> Option<String> {
    routes
        .filter(|r| r.dst.contains(ip) && r.iface != "lo")
        .min_by_key(|r| (std::cmp::Reverse(r.dst.prefix()), r.metric))
        .map(|r| r.iface)
}

/// `Iface Destination Gateway Flags RefCnt Use Metric Mask …`, addresses as the kernel's
/// in-memory u32 in hex; routes that are not up (RTF_UP 0x1) are skipped.
pub(super) fn parse_route_v4(line: &str) -> Option<Route> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return None;
    }
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let flags = hex(f[3])?;
    if flags & 0x1 == 0 {
        return None;
    }
    let dst = Ipv4Addr::from(hex(f[1])?.to_ne_bytes());
    let mask = Ipv4Addr::from(hex(f[7])?.to_ne_bytes());
    let prefix = u32::from(mask).count_ones() as u8;
    Some(Route {
        dst: IpNetwork::new(IpAddr::V4(dst), prefix).ok()?,
        metric: f[6].parse().ok()?,
        iface: f[0].to_string(),
    })
}

/// `dst dst_len src src_len nexthop metric refcnt use flags iface` in hex; reject routes
/// (RTF_REJECT 0x200) are skipped.
pub(super) fn parse_route_v6(line: &str) -> Option<Route> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 || f[0].len() != 32 {
        return None;
    }
    let flags = u32::from_str_radix(f[8], 16).ok()?;
    if flags & 0x200 != 0 || flags & 0x1 == 0 {
        return None;
    }
    let dst = Ipv6Addr::from(u128::from_str_radix(f[0], 16).ok()?);
    Some(Route {
        dst: IpNetwork::new(IpAddr::V6(dst), u8::from_str_radix(f[1], 16).ok()?).ok()?,
        metric: u32::from_str_radix(f[5], 16).ok()?,
        iface: f[9].to_string(),
    })
}

/// The source address the kernel picks for a connection from this node to `dst` (a
/// connected UDP socket sends nothing); `None` when there is no route.
pub(super) fn node_source(dst: IpAddr, port: u16) -> Option<IpAddr> {
    let any: SocketAddr = match dst {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(any).ok()?;
    s.connect((dst, port.max(1))).ok()?;
    Some(s.local_addr().ok()?.ip())
}

/// Who the ruleset counts as a pod (its local-traffic detector): source CIDRs, or input
/// interfaces (a trailing `*` is a prefix).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct PodNetwork {
    pub(super) cidrs: Vec<IpNetwork>,
    pub(super) ifaces: Vec<String>,
}

impl PodNetwork {
    /// Read from the rule "ClusterIP traffic from outside the pod network" of `family`'s
    /// table (and the `pod-cidrs` set it may look up).
    pub(super) fn of(rs: &Ruleset, family: Family) -> PodNetwork {
        let mut out = PodNetwork::default();
        let Some(table) = rs.table(family) else {
            return out;
        };
        let rules = table.chains.values().flat_map(|c| c.rules.iter());
        let detector = rules.filter(|r| {
            r.comment.as_deref() == Some("ClusterIP traffic from outside the pod network")
        });
        for stmt in detector.flat_map(|r| r.stmts.iter()) {
            match stmt {
                Stmt::Cmp {
                    field: Field::Saddr,
                    op: CmpOp::Ne,
                    value: Value::Net(n),
                } => out.cidrs.push(*n),
                Stmt::Cmp {
                    field: Field::Iifname,
                    op: CmpOp::Ne,
                    value: Value::Iface(i),
                } => out.ifaces.push(i.to_string()),
                Stmt::Lookup {
                    key, set, negate, ..
                } if *negate && key.as_slice() == [Field::Saddr] => {
                    let elements = table.sets.get(set).map(|s| s.elements.iter());
                    for e in elements.into_iter().flatten() {
                        if let [Value::Net(n)] = e.key.as_slice() {
                            out.cidrs.push(*n);
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }

    pub(super) fn contains(&self, src: IpAddr, iif: &str) -> bool {
        self.cidrs.iter().any(|c| c.contains(src))
            || self.ifaces.iter().any(|i| match i.strip_suffix('*') {
                Some(prefix) => iif.starts_with(prefix),
                None => i == iif,
            })
    }
}

/// Where the kernel's trace and the render's differ: verdict, endpoint set, masquerade.
/// Empty when they agree.
pub(super) fn differences(kernel: &Trace, rendered: &Trace) -> Vec<String> {
    let mut out = Vec::new();
    if kernel.verdict != rendered.verdict {
        out.push(format!(
            "verdict: the kernel's rules {}, the render {}",
            kernel.verdict.name(),
            rendered.verdict.name()
        ));
    }
    if kernel.endpoints != rendered.endpoints {
        let only = |a: &[EndpointAddr], b: &[EndpointAddr]| -> String {
            let v: Vec<String> = a
                .iter()
                .filter(|e| !b.contains(e))
                .map(|e| e.to_string())
                .collect();
            if v.is_empty() {
                "none".into()
            } else {
                v.join(", ")
            }
        };
        out.push(format!(
            "endpoints: only in the kernel: {}; only in the render: {}",
            only(&kernel.endpoints, &rendered.endpoints),
            only(&rendered.endpoints, &kernel.endpoints)
        ));
    }
    if kernel.masquerade != rendered.masquerade {
        let yes_no = |b: bool| {
            if b {
                "masquerades"
            } else {
                "does not masquerade"
            }
        };
        out.push(format!(
            "masquerade: the kernel {}, the render {}",
            yes_no(kernel.masquerade),
            yes_no(rendered.masquerade)
        ));
    }
    out
}
