//! Stale UDP conntrack cleanup: deciding which UDP flows of the kernel's connection
//! tracking table are stale after a service's endpoints changed, and deleting them.
//!
//! Owns: the decision (this file, pure: [`StaleFilter`] and [`Flow`]) and the ctnetlink
//! dump/delete that applies it ([`netlink`], [`Conntrack`]; `app` plugs it into the sync
//! loop as its `FlowCleaner`). Uses only [`crate::netlink`] and `model`'s data types.
//!
//! Why: UDP has no connection teardown. A client that keeps sending from one source port
//! keeps its conntrack entry alive forever, and an entry pins the NAT decision it was
//! created with. So a client DNATed to an endpoint that has gone keeps sending to it, and
//! a client that sent while a service could not be reached (no rules yet, no endpoints:
//! the entry was created without DNAT) keeps bypassing the service's DNAT once endpoints
//! exist. Deleting the entry makes the next datagram a new flow that the current rules
//! decide.
//!
//! The rules (those of upstream kube-proxy's conntrack reconciler): a flow is *relevant*
//! when its original destination `(ip, port)` is one of a UDP service port's addresses —
//! the ClusterIP with the service port, every external IP and LoadBalancer IP with the
//! service port, or a node address with the node port (when there is one). For a relevant
//! flow:
//! - DNATed (reply source ≠ original destination): deleted when the reply source
//!   `(ip, port)` is not one of the port's serving endpoints (`cluster_endpoints` ∪
//!   `local_endpoints`).
//! - not DNATed: deleted when the port has serving endpoints now.
//!
//! Flows to any other destination are never touched.
//!
//! Must not: allocate per flow (a table can hold a million entries: the filter is two
//! hash lookups on borrowed data), or touch anything but UDP flows of the family asked.

pub mod netlink;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::model::{Family, Protocol, ServicePort};

pub use netlink::Conntrack;

/// One direction of a conntrack entry (a UDP tuple: protocol implied).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

/// A UDP conntrack entry as far as cleanup cares: both tuples and what identifies it for a
/// delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flow {
    /// The tuple of the first packet (client → service address), as the client sent it.
    pub orig: Tuple,
    /// The tuple replies match (endpoint → client or masquerade address).
    pub reply: Tuple,
    /// `CTA_ZONE`, when the entry is not in the default zone.
    pub zone: Option<u16>,
    /// `CTA_TUPLE_ZONE` of the original tuple (directional zones).
    pub orig_zone: Option<u16>,
    /// The kernel's id of the entry (`CTA_ID`): a delete carrying it cannot remove a newer
    /// entry that took the same tuple in the meantime.
    pub id: Option<u32>,
}

impl Flow {
    /// Whether the entry's NAT rewrote the destination: replies come from somewhere else
    /// than where the client sent to.
    pub fn dnated(&self) -> bool {
        self.reply.src != self.orig.dst || self.reply.sport != self.orig.dport
    }
}

/// What [`StaleFilter::decide`] says about a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not to a service address of the ports given: never touched.
    Unrelated,
    /// To a service address and still right.
    Keep,
    /// DNATed to an address that is not one of the port's serving endpoints (any more).
    DeleteStaleEndpoint,
    /// Created without DNAT (while the service had no endpoints or no rules), and the port
    /// has endpoints now.
    DeleteNotDnated,
}

impl Decision {
    pub fn delete(self) -> bool {
        matches!(
            self,
            Decision::DeleteStaleEndpoint | Decision::DeleteNotDnated
        )
    }
}

/// The service side of the decision, indexed for O(1) per flow: built once per cleanup
/// from the current UDP service ports of one family (a deleted service is given with empty
/// endpoint lists).
///
/// Two ports answering on the same address and port (a conflict the API server normally
/// prevents, e.g. one external IP on two services) are merged: a flow there is kept when
/// either port would keep it, so a conflict never deletes more.
#[derive(Debug, Default)]
pub struct StaleFilter {
    /// Service address → port group.
    addrs: HashMap<(IpAddr, u16), u32>,
    /// (port group, endpoint) for every serving endpoint.
    endpoints: HashSet<(u32, IpAddr, u16)>,
    /// Per port group: whether it has serving endpoints.
    has_endpoints: Vec<bool>,
}

impl StaleFilter {
    /// Indexes the UDP ports of `family` among `ports`, with NodePorts on `node_addresses`
    /// (addresses of other families are ignored).
    pub fn new(family: Family, ports: &[ServicePort], node_addresses: &[IpAddr]) -> StaleFilter {
        let mut f = StaleFilter::default();
        let node_addrs: Vec<IpAddr> = node_addresses
            .iter()
            .copied()
            .filter(|a| family.contains(a))
            .collect();
        for sp in ports {
            if sp.name.protocol != Protocol::Udp || !family.contains(&sp.cluster_ip) {
                continue;
            }
            let serving = sp.cluster_endpoints.iter().chain(&sp.local_endpoints);
            let mut addrs: Vec<(IpAddr, u16)> = vec![(sp.cluster_ip, sp.port)];
            addrs.extend(
                sp.external_ips
                    .iter()
                    .chain(&sp.load_balancer_ips)
                    .filter(|a| family.contains(a))
                    .map(|a| (*a, sp.port)),
            );
            if sp.node_port != 0 {
                addrs.extend(node_addrs.iter().map(|a| (*a, sp.node_port)));
            }
            // The group of an address another port already claimed, else a new one.
            let group = addrs
                .iter()
                .find_map(|a| f.addrs.get(a).copied())
                .unwrap_or_else(|| {
                    f.has_endpoints.push(false);
                    (f.has_endpoints.len() - 1) as u32
                });
            for a in addrs {
                f.addrs.entry(a).or_insert(group);
            }
            for ep in serving {
                f.endpoints.insert((group, ep.ip, ep.port));
                f.has_endpoints[group as usize] = true;
            }
        }
        f
    }

    /// True when no flow can be relevant (nothing to dump).
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The decision for one flow: two hash lookups, no allocation.
    pub fn decide(&self, flow: &Flow) -> Decision {
        let Some(&group) = self.addrs.get(&(flow.orig.dst, flow.orig.dport)) else {
            return Decision::Unrelated;
        };
        if flow.dnated() {
            if self
                .endpoints
                .contains(&(group, flow.reply.src, flow.reply.sport))
            {
                Decision::Keep
            } else {
                Decision::DeleteStaleEndpoint
            }
        } else if self.has_endpoints[group as usize] {
            Decision::DeleteNotDnated
        } else {
            Decision::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EndpointAddr;
    use crate::testutil::fixtures::service_port;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ep(s: &str, port: u16) -> EndpointAddr {
        EndpointAddr { ip: ip(s), port }
    }

    fn port(name: &str, cluster_ip: &str, port: u16, node_port: u16) -> ServicePort {
        service_port("ns", name, "dns", Protocol::Udp)
            .cluster_ip(cluster_ip)
            .port(port)
            .node_port(node_port)
            .build()
    }

    /// A flow from `client:40000` to `dst:dport` answered by `reply_src:rport`, replying to
    /// `reply_dst` (the client, or a masquerade address).
    fn flow(dst: &str, dport: u16, reply_src: &str, rport: u16) -> Flow {
        let client = if dst.contains(':') {
            ip("fd00::99")
        } else {
            ip("10.0.0.99")
        };
        Flow {
            orig: Tuple {
                src: client,
                dst: ip(dst),
                sport: 40000,
                dport,
            },
            reply: Tuple {
                src: ip(reply_src),
                dst: client,
                sport: rport,
                dport: 40000,
            },
            zone: None,
            orig_zone: None,
            id: None,
        }
    }

    fn dns() -> ServicePort {
        service_port("ns", "dns", "dns", Protocol::Udp)
            .cluster_ip("10.96.0.10")
            .port(53)
            .node_port(30053)
            .external_ips(&["203.0.113.1", "2001:db8::1"])
            .load_balancer_ips(&["203.0.113.2"])
            .cluster_endpoint("10.244.1.11", 5353)
            .cluster_endpoint("10.244.2.11", 5353)
            .build()
    }

    const NODE: &str = "192.168.50.10";

    fn filter(ports: &[ServicePort]) -> StaleFilter {
        StaleFilter::new(Family::V4, ports, &[ip(NODE), ip("fd00:50::10")])
    }

    #[test]
    fn dnated_to_a_serving_endpoint_is_kept_on_every_service_address() {
        let f = filter(&[dns()]);
        for (dst, dport) in [
            ("10.96.0.10", 53),
            ("203.0.113.1", 53),
            ("203.0.113.2", 53),
            (NODE, 30053),
        ] {
            assert_eq!(
                f.decide(&flow(dst, dport, "10.244.2.11", 5353)),
                Decision::Keep,
                "{dst}:{dport}"
            );
        }
    }

    #[test]
    fn dnated_to_a_removed_endpoint_is_deleted_on_every_service_address() {
        let f = filter(&[dns()]);
        for (dst, dport) in [
            ("10.96.0.10", 53),
            ("203.0.113.1", 53),
            ("203.0.113.2", 53),
            (NODE, 30053),
        ] {
            assert_eq!(
                f.decide(&flow(dst, dport, "10.244.1.12", 5353)),
                Decision::DeleteStaleEndpoint,
                "{dst}:{dport}"
            );
        }
    }

    #[test]
    fn endpoint_port_counts_not_just_the_address() {
        // Same pod, but the target port changed: the old flow goes.
        let f = filter(&[dns()]);
        assert_eq!(
            f.decide(&flow("10.96.0.10", 53, "10.244.1.11", 53)),
            Decision::DeleteStaleEndpoint
        );
    }

    #[test]
    fn local_endpoints_are_serving_too() {
        let mut p = dns();
        p.internal_policy_local = true;
        p.cluster_endpoints.clear();
        p.local_endpoints = vec![ep("10.244.1.13", 5353)];
        let f = filter(&[p]);
        assert_eq!(
            f.decide(&flow("10.96.0.10", 53, "10.244.1.13", 5353)),
            Decision::Keep
        );
        assert_eq!(
            f.decide(&flow("10.96.0.10", 53, "10.244.1.11", 5353)),
            Decision::DeleteStaleEndpoint
        );
    }

    #[test]
    fn scaled_to_zero_or_deleted_service_deletes_every_dnated_flow() {
        let mut p = dns();
        p.cluster_endpoints.clear();
        p.has_endpoints = false;
        let f = filter(&[p]);
        assert_eq!(
            f.decide(&flow("10.96.0.10", 53, "10.244.1.11", 5353)),
            Decision::DeleteStaleEndpoint
        );
        assert_eq!(
            f.decide(&flow(NODE, 30053, "10.244.2.11", 5353)),
            Decision::DeleteStaleEndpoint
        );
        // Not DNATed while there are no endpoints: nothing better to send it to, kept.
        assert_eq!(
            f.decide(&flow("10.96.0.10", 53, "10.96.0.10", 53)),
            Decision::Keep
        );
    }

    #[test]
    fn not_dnated_flow_is_deleted_once_endpoints_exist() {
        let f = filter(&[dns()]);
        assert_eq!(
            f.decide(&flow("10.96.0.10", 53, "10.96.0.10", 53)),
            Decision::DeleteNotDnated
        );
        assert_eq!(
            f.decide(&flow(NODE, 30053, NODE, 30053)),
            Decision::DeleteNotDnated
        );
    }

    #[test]
    fn other_destinations_are_never_touched() {
        let f = filter(&[dns()]);
        for (dst, dport) in [
            ("10.96.0.10", 54),       // other port of the ClusterIP
            ("10.96.0.11", 53),       // other address
            (NODE, 53),               // node address, service port
            ("192.168.50.11", 30053), // not a node address
            ("203.0.113.1", 30053),   // external IP with the node port
        ] {
            assert_eq!(
                f.decide(&flow(dst, dport, "10.244.9.9", 5353)),
                Decision::Unrelated,
                "{dst}:{dport}"
            );
            assert_eq!(
                f.decide(&flow(dst, dport, dst, dport)),
                Decision::Unrelated,
                "{dst}:{dport} not DNATed"
            );
        }
    }

    #[test]
    fn no_node_port_means_no_node_address_match() {
        let mut p = dns();
        p.node_port = 0;
        let f = filter(&[p]);
        assert_eq!(
            f.decide(&flow(NODE, 0, "10.244.9.9", 5353)),
            Decision::Unrelated
        );
    }

    #[test]
    fn other_families_and_protocols_are_ignored() {
        let mut tcp = port("web", "10.96.0.20", 80, 0);
        tcp.name.protocol = Protocol::Tcp;
        let v6 = port("v6", "fd00:10:96::10", 53, 0);
        let f = filter(&[tcp, v6, dns()]);
        assert_eq!(
            f.decide(&flow("10.96.0.20", 80, "10.244.9.9", 80)),
            Decision::Unrelated
        );
        // The v6 external IP of a v4 port and the v6 node address are not indexed.
        assert_eq!(
            f.decide(&flow("2001:db8::1", 53, "fd00::1", 5353)),
            Decision::Unrelated
        );
        assert_eq!(
            f.decide(&flow("fd00:50::10", 30053, "fd00::1", 5353)),
            Decision::Unrelated
        );
    }

    #[test]
    fn ipv6_ports_are_indexed_for_ipv6() {
        let mut p = port("dns6", "fd00:10:96::10", 53, 30053);
        p.cluster_endpoints = vec![ep("fd00:10:244:1::11", 5353)];
        let f = StaleFilter::new(Family::V6, &[p], &[ip(NODE), ip("fd00:50::10")]);
        assert_eq!(
            f.decide(&flow("fd00:10:96::10", 53, "fd00:10:244:1::11", 5353)),
            Decision::Keep
        );
        assert_eq!(
            f.decide(&flow("fd00:50::10", 30053, "fd00:10:244:1::12", 5353)),
            Decision::DeleteStaleEndpoint
        );
        assert_eq!(
            f.decide(&flow("fd00:50::10", 30053, "fd00:50::10", 30053)),
            Decision::DeleteNotDnated
        );
    }

    #[test]
    fn ports_sharing_an_address_are_merged_never_deleting_more() {
        // Two services claim one external IP and port: an endpoint of either keeps a flow.
        let mut a = dns();
        a.node_port = 0;
        let mut b = port("other", "10.96.0.30", 53, 0);
        b.external_ips = vec![ip("203.0.113.1")];
        b.cluster_endpoints = vec![ep("10.244.3.3", 5353)];
        let f = filter(&[a, b]);
        assert_eq!(
            f.decide(&flow("203.0.113.1", 53, "10.244.3.3", 5353)),
            Decision::Keep
        );
        assert_eq!(
            f.decide(&flow("203.0.113.1", 53, "10.244.1.11", 5353)),
            Decision::Keep
        );
        assert_eq!(
            f.decide(&flow("203.0.113.1", 53, "10.244.4.4", 5353)),
            Decision::DeleteStaleEndpoint
        );
    }

    #[test]
    fn empty_input_is_empty() {
        assert!(filter(&[]).is_empty());
        assert!(!filter(&[dns()]).is_empty());
    }
}
