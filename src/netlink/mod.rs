//! Netlink: the socket and the message layer, on libmnl (the `mnl` crate's `mnl_sys`),
//! shared by the nftables backend ([`crate::backend::netlink`]) and conntrack cleanup
//! ([`crate::conntrack`]).
//!
//! Owns: the `NETLINK_NETFILTER` socket ([`socket`]: libmnl's socket handle, buffer
//! sizes, sending a batch in one `sendmsg`, receiving), reply dispatch ([`reply`]:
//! libmnl's callback run-queue sorting replies into data, errors/ACKs with their extended
//! ACK offsets, and the end of a dump) and the framing every netfilter subsystem shares
//! ([`wire`]: `nlmsghdr`, `nfgenmsg`, attributes and nests, the netlink and nfnetlink
//! constants).
//!
//! Must not: know any subsystem's messages: nf_tables' are `backend::netlink`'s,
//! ctnetlink's are `conntrack`'s. Only those two use this module; it uses nothing of
//! kproxy.
//!
//! Where `unsafe` lives, and why (each block carries a `// SAFETY:` line):
//! - here, [`socket`]: libmnl's socket calls (`mnl_socket_open2`, `_bind`, `_setsockopt`,
//!   `_recvfrom`, `_fdopen`, `_close`), and raw `setsockopt` (`SOL_SOCKET` buffer sizes),
//!   `sendmsg`, `poll` and `setns` calls: the whole nftables batch must go out in ONE
//!   `sendmsg()` with one iovec per page (see `backend::netlink`), which libmnl does not
//!   offer;
//! - here, [`reply`]: libmnl's `mnl_cb_run2` and `mnl_attr_parse_payload` with their
//!   callbacks (the C side gets a live slice for the call and hands back positions in it);
//! - the libnftnl wrapper in `backend::netlink`: the nftables objects' encoding and parsing;
//! - `app`: `getifaddrs` (the host's addresses, for nodePortAddresses CIDRs and conntrack)
//!   and mimalloc's `mi_collect` (returning a full sync's freed peak to the OS);
//! - `testutil` (test-util only): `setns` back to the test's own namespace and the
//!   counting global allocator of the memory tests;
//! - the `kproxy-echo` test server binary: `setsockopt`, `recvmsg` and `sendmsg` with
//!   packet-info control data (the destination address of a UDP datagram on a wildcard
//!   socket, and replying from it), which std and socket2 do not offer.
//!
//! Nothing else is `unsafe`; no raw pointer leaves these functions.

pub(crate) mod reply;
pub(crate) mod socket;
pub(crate) mod wire;

#[cfg(any(test, feature = "test-util"))]
pub use self::socket::enter_netns;
