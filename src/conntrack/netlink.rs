//! ctnetlink: dumping the kernel's UDP conntrack entries of one family and deleting the
//! stale ones, over a `NETLINK_NETFILTER` socket (the socket and TLV code shared with the
//! nftables backend, [`crate::netlink`]).
//!
//! Owns: the ctnetlink messages (`IPCTNL_MSG_CT_GET` dump, `IPCTNL_MSG_CT_DELETE`), parsing
//! of `CTA_TUPLE_ORIG` / `CTA_TUPLE_REPLY`, and the error handling around them. The
//! decision is [`StaleFilter`]'s.
//!
//! Details (kernel 6.18; facts from `nf_conntrack_netlink.c`):
//! - The dump is filtered by the kernel to the nfgenmsg family, and to UDP with `CTA_FILTER`
//!   (orig flags = `CTA_FILTER_F_CTA_PROTO_NUM`, kernel >= 5.8). A kernel that rejects the
//!   filter (EINVAL / EOPNOTSUPP) gets an unfiltered dump; the protocol is checked here
//!   anyway.
//! - A dump is multipart (many `NLM_F_MULTI` datagrams) ending with NLMSG_DONE. A dump
//!   flagged `NLM_F_DUMP_INTR`, or ending in EINTR / EAGAIN, is started again (the whole
//!   result is discarded), a few times at most.
//! - The whole table is read before anything is deleted; only the stale flows are kept
//!   (a copy each, no other allocation per entry).
//! - Deletes carry the original tuple, `CTA_ZONE` when the entry has a zone, and `CTA_ID`:
//!   an entry that was replaced in the meantime (a new flow with the same tuple, decided by
//!   the current rules) is not deleted. ENOENT means the entry is already gone: success,
//!   not counted.
//! - Deletes go out many per datagram without `NLM_F_ACK`: the kernel handles every
//!   message inside `sendmsg()` and queues a reply only for failures, so all replies are
//!   there when it returns; the receive buffer is raised so they fit.

use std::io;

use super::{Flow, StaleFilter, Tuple};
use crate::model::Family;
use crate::netlink::reply::{self, Reply, Step};
use crate::netlink::socket::NlSocket;
use crate::netlink::wire::{c, Attrs, Builder};

/// Constants from `linux/netfilter/nfnetlink.h`, `nfnetlink_conntrack.h` and the kernel's
/// `nf_internals.h` (the filter flag is ABI, but not in a uapi header).
mod ct {
    pub const NFNL_SUBSYS_CTNETLINK: u16 = 1;
    pub const IPCTNL_MSG_CT_NEW: u16 = 0;
    pub const IPCTNL_MSG_CT_GET: u16 = 1;
    pub const IPCTNL_MSG_CT_DELETE: u16 = 2;

    pub const CTA_TUPLE_ORIG: u16 = 1;
    pub const CTA_TUPLE_REPLY: u16 = 2;
    pub const CTA_ID: u16 = 12;
    pub const CTA_ZONE: u16 = 18;
    pub const CTA_FILTER: u16 = 25;

    pub const CTA_TUPLE_IP: u16 = 1;
    pub const CTA_TUPLE_PROTO: u16 = 2;
    pub const CTA_TUPLE_ZONE: u16 = 3;

    pub const CTA_IP_V4_SRC: u16 = 1;
    pub const CTA_IP_V4_DST: u16 = 2;
    pub const CTA_IP_V6_SRC: u16 = 3;
    pub const CTA_IP_V6_DST: u16 = 4;

    pub const CTA_PROTO_NUM: u16 = 1;
    pub const CTA_PROTO_SRC_PORT: u16 = 2;
    pub const CTA_PROTO_DST_PORT: u16 = 3;

    pub const CTA_FILTER_ORIG_FLAGS: u16 = 1;
    pub const CTA_FILTER_F_CTA_PROTO_NUM: u32 = 1 << 3;

    pub const IPPROTO_UDP: u8 = 17;
}

/// How often an interrupted dump is started again before giving up.
const DUMP_ATTEMPTS: usize = 5;
/// Delete requests per datagram (about 100 bytes each).
const DELETES_PER_SEND: usize = 512;

/// What can go wrong talking to ctnetlink.
#[derive(Debug, thiserror::Error)]
pub enum CtError {
    #[error("conntrack netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("conntrack {op}: {}", io::Error::from_raw_os_error(*.errno))]
    Kernel { op: &'static str, errno: i32 },
    #[error("conntrack dump interrupted {DUMP_ATTEMPTS} times in a row")]
    Interrupted,
    /// A reply whose netlink framing is broken: what follows cannot be read.
    #[error("malformed ctnetlink reply at byte {offset} of {len}")]
    Malformed { offset: usize, len: usize },
}

/// What one [`Conntrack::clean_stale`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    /// UDP entries of the family the dump returned.
    pub examined: usize,
    /// Entries the filter judged stale.
    pub stale: usize,
    /// Entries this call deleted.
    pub deleted: usize,
    /// Stale entries that were gone (or replaced) before their delete.
    pub gone: usize,
    /// Deletes the kernel refused for another reason (the first errno is logged).
    pub failed: usize,
}

/// A ctnetlink socket in the network namespace of the thread that opened it.
pub struct Conntrack {
    sock: NlSocket,
    seq: u32,
    /// The kernel accepts `CTA_FILTER` (cleared after it refused it once).
    kernel_filter: bool,
}

fn msg_type(ty: u16) -> u16 {
    (ct::NFNL_SUBSYS_CTNETLINK << 8) | ty
}

fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => c::NFPROTO_IPV4,
        Family::V6 => c::NFPROTO_IPV6,
    }
}

impl From<reply::Malformed> for CtError {
    fn from(e: reply::Malformed) -> Self {
        CtError::Malformed {
            offset: e.offset,
            len: e.len,
        }
    }
}

/// One received buffer of the dump answering request `seq`: each UDP flow of `family` in
/// it goes to `visit`; `Some` when the dump ended in it. A broken buffer is refused whole.
fn read_dump_buffer(
    buf: &[u8],
    seq: u32,
    family: Family,
    interrupted: &mut bool,
    visit: &mut dyn FnMut(&Flow),
) -> Result<Option<DumpEnd>, CtError> {
    let want = nfproto(family);
    let mut end = None;
    reply::dispatch(buf, &mut |r| {
        let m = r.msg();
        if m.seq != seq {
            return Step::Next; // a late reply to an earlier request
        }
        *interrupted |= m.flags & c::NLM_F_DUMP_INTR != 0;
        end = match r {
            Reply::Done { errno, .. } => Some(match errno {
                0 if !*interrupted => DumpEnd::Done,
                0 | libc::EINTR | libc::EAGAIN => DumpEnd::Retry,
                e => DumpEnd::Refused(e),
            }),
            Reply::Error { errno: 0, .. } | Reply::Other(_) => None,
            Reply::Error {
                errno: libc::EINTR | libc::EAGAIN,
                ..
            } => Some(DumpEnd::Retry),
            Reply::Error { errno, .. } => Some(DumpEnd::Refused(errno)),
            Reply::Data(m) => {
                if m.ty == msg_type(ct::IPCTNL_MSG_CT_NEW) && m.family() == want {
                    if let Some(f) = parse_flow(m.attrs()) {
                        visit(&f);
                    }
                }
                None
            }
        };
        if end.is_some() {
            Step::Stop
        } else {
            Step::Next
        }
    })?;
    Ok(end)
}

/// What [`decode_dump`] read.
#[cfg(any(test, feature = "test-util"))]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedDump {
    /// The UDP flows of the family, in order.
    pub flows: Vec<Flow>,
    /// How the dump ended: `Ok` (NLMSG_DONE, not interrupted), an errno (EINTR for an
    /// interrupted dump), or `None` when the replies did not end it.
    pub end: Option<Result<(), i32>>,
}

/// The replies of a dump request `seq` (received buffers back to back): the UDP flows of
/// `family` they hold and how the dump ended, or the error a broken reply is. The stable
/// entry point of the decoder tests (`tests/decode_fuzz.rs`).
#[cfg(any(test, feature = "test-util"))]
pub fn decode_dump(buf: &[u8], seq: u32, family: Family) -> Result<DecodedDump, CtError> {
    let mut flows = Vec::new();
    let mut interrupted = false;
    let end = read_dump_buffer(buf, seq, family, &mut interrupted, &mut |f| flows.push(*f))?;
    let end = end.map(|e| match e {
        DumpEnd::Done => Ok(()),
        DumpEnd::Retry => Err(libc::EINTR),
        DumpEnd::Refused(e) => Err(e),
    });
    Ok(DecodedDump { flows, end })
}

/// The dump request: every entry of `family`, only UDP with `filter`.
pub(crate) fn encode_dump(seq: u32, family: Family, filter: bool) -> Builder {
    let mut w = Builder::with_capacity(64);
    w.begin_msg(
        msg_type(ct::IPCTNL_MSG_CT_GET),
        c::NLM_F_REQUEST | c::NLM_F_DUMP,
        seq,
        nfproto(family),
        0,
    );
    if filter {
        let t = w.nest_begin(ct::CTA_TUPLE_ORIG);
        let p = w.nest_begin(ct::CTA_TUPLE_PROTO);
        w.u8(ct::CTA_PROTO_NUM, ct::IPPROTO_UDP);
        w.nest_end(p);
        w.nest_end(t);
        let f = w.nest_begin(ct::CTA_FILTER);
        // Host byte order (a plain NLA_U32), unlike the CTA_* values.
        w.attr(
            ct::CTA_FILTER_ORIG_FLAGS,
            &ct::CTA_FILTER_F_CTA_PROTO_NUM.to_ne_bytes(),
        );
        w.nest_end(f);
    }
    w.end_msg();
    w
}

fn put_tuple(w: &mut Builder, ty: u16, t: &Tuple, proto: u8, zone: Option<u16>) {
    let n = w.nest_begin(ty);
    let ip = w.nest_begin(ct::CTA_TUPLE_IP);
    match (t.src, t.dst) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            w.attr(ct::CTA_IP_V4_SRC, &s.octets());
            w.attr(ct::CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            w.attr(ct::CTA_IP_V6_SRC, &v6_octets(s));
            w.attr(ct::CTA_IP_V6_DST, &v6_octets(d));
        }
    }
    w.nest_end(ip);
    let p = w.nest_begin(ct::CTA_TUPLE_PROTO);
    w.u8(ct::CTA_PROTO_NUM, proto);
    w.attr(ct::CTA_PROTO_SRC_PORT, &t.sport.to_be_bytes());
    w.attr(ct::CTA_PROTO_DST_PORT, &t.dport.to_be_bytes());
    w.nest_end(p);
    if let Some(z) = zone {
        w.attr(ct::CTA_TUPLE_ZONE, &z.to_be_bytes());
    }
    w.nest_end(n);
}

fn v6_octets(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V6(a) => a.octets(),
        std::net::IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
    }
}

/// Appends the delete request of one flow (identified by its original tuple, zone, id).
pub(crate) fn encode_delete(w: &mut Builder, seq: u32, family: Family, flow: &Flow) {
    w.begin_msg(
        msg_type(ct::IPCTNL_MSG_CT_DELETE),
        c::NLM_F_REQUEST,
        seq,
        nfproto(family),
        0,
    );
    put_tuple(
        w,
        ct::CTA_TUPLE_ORIG,
        &flow.orig,
        ct::IPPROTO_UDP,
        flow.orig_zone,
    );
    if let Some(z) = flow.zone {
        w.attr(ct::CTA_ZONE, &z.to_be_bytes());
    }
    if let Some(id) = flow.id {
        w.u32_be(ct::CTA_ID, id);
    }
    w.end_msg();
}

fn be16(d: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(d.get(..2)?.try_into().ok()?))
}

/// One tuple nest: `(tuple, protocol number, CTA_TUPLE_ZONE)`. `None` when an address or a
/// port is missing (not a port-based protocol) or malformed.
fn parse_tuple(nest: Attrs<'_>) -> Option<(Tuple, u8, Option<u16>)> {
    let (mut src, mut dst, mut sport, mut dport, mut proto, mut zone) =
        (None, None, None, None, None, None);
    for (ty, d) in nest {
        match ty {
            ct::CTA_TUPLE_IP => {
                for (ty, d) in Attrs::new(d) {
                    let ip = match (ty, d.len()) {
                        (ct::CTA_IP_V4_SRC | ct::CTA_IP_V4_DST, 4) => {
                            std::net::IpAddr::from(<[u8; 4]>::try_from(d).ok()?)
                        }
                        (ct::CTA_IP_V6_SRC | ct::CTA_IP_V6_DST, 16) => {
                            std::net::IpAddr::from(<[u8; 16]>::try_from(d).ok()?)
                        }
                        _ => continue,
                    };
                    match ty {
                        ct::CTA_IP_V4_SRC | ct::CTA_IP_V6_SRC => src = Some(ip),
                        _ => dst = Some(ip),
                    }
                }
            }
            ct::CTA_TUPLE_PROTO => {
                for (ty, d) in Attrs::new(d) {
                    match ty {
                        ct::CTA_PROTO_NUM => proto = d.first().copied(),
                        ct::CTA_PROTO_SRC_PORT => sport = be16(d),
                        ct::CTA_PROTO_DST_PORT => dport = be16(d),
                        _ => {}
                    }
                }
            }
            ct::CTA_TUPLE_ZONE => zone = be16(d),
            _ => {}
        }
    }
    Some((
        Tuple {
            src: src?,
            dst: dst?,
            sport: sport?,
            dport: dport?,
        },
        proto?,
        zone,
    ))
}

/// A UDP flow from the attributes of one conntrack message (after the nfgenmsg); `None`
/// for other protocols or incomplete entries.
pub(crate) fn parse_flow(attrs: Attrs<'_>) -> Option<Flow> {
    let (mut orig, mut reply, mut zone, mut id) = (None, None, None, None);
    for (ty, d) in attrs {
        match ty {
            ct::CTA_TUPLE_ORIG => orig = Some(parse_tuple(Attrs::new(d))?),
            ct::CTA_TUPLE_REPLY => reply = Some(parse_tuple(Attrs::new(d))?),
            ct::CTA_ZONE => zone = be16(d),
            ct::CTA_ID => {
                id = d
                    .get(..4)
                    .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
            }
            _ => {}
        }
    }
    let (orig, oproto, orig_zone) = orig?;
    let (reply, rproto, _) = reply?;
    if oproto != ct::IPPROTO_UDP || rproto != ct::IPPROTO_UDP {
        return None;
    }
    Some(Flow {
        orig,
        reply,
        zone,
        orig_zone,
        id,
    })
}

/// How one dump attempt ended.
#[derive(Debug)]
enum DumpEnd {
    Done,
    /// Interrupted: start again.
    Retry,
    /// The kernel refused the request itself.
    Refused(i32),
}

impl Conntrack {
    /// Opens a ctnetlink socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Conntrack> {
        Ok(Conntrack {
            sock: NlSocket::open()?,
            seq: 0,
            kernel_filter: true,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Every UDP entry of `family` for which `keep` is true (the whole table is read; only
    /// the kept entries are copied out).
    pub fn udp_flows(
        &mut self,
        family: Family,
        keep: &mut dyn FnMut(&Flow) -> bool,
    ) -> Result<(Vec<Flow>, usize), CtError> {
        for _ in 0..DUMP_ATTEMPTS {
            let mut out = Vec::new();
            let mut examined = 0usize;
            let filter = self.kernel_filter;
            match self.dump_once(family, filter, &mut |f| {
                examined += 1;
                if keep(f) {
                    out.push(*f);
                }
            })? {
                DumpEnd::Done => return Ok((out, examined)),
                DumpEnd::Retry => continue,
                DumpEnd::Refused(e) if filter && (e == libc::EINVAL || e == libc::EOPNOTSUPP) => {
                    tracing::debug!(errno = e, "kernel refused CTA_FILTER; filtering in kproxy");
                    self.kernel_filter = false;
                }
                DumpEnd::Refused(errno) => return Err(CtError::Kernel { op: "dump", errno }),
            }
        }
        Err(CtError::Interrupted)
    }

    fn dump_once(
        &mut self,
        family: Family,
        filter: bool,
        visit: &mut dyn FnMut(&Flow),
    ) -> Result<DumpEnd, CtError> {
        let seq = self.next_seq();
        let req = encode_dump(seq, family, filter);
        self.sock.send_pages(&[req.bytes()])?;
        let mut interrupted = false;
        loop {
            let buf = self
                .sock
                .recv(false)?
                .expect("a blocking recv returns data");
            if let Some(end) = read_dump_buffer(buf, seq, family, &mut interrupted, visit)? {
                return Ok(end);
            }
        }
    }

    /// Deletes these flows of `family`. Entries already gone count in `gone`, other
    /// refusals in `failed` (logged); only an I/O error fails the call.
    pub fn delete(&mut self, family: Family, flows: &[Flow]) -> Result<CleanStats, CtError> {
        let mut st = CleanStats::default();
        let mut first_error = None;
        for chunk in flows.chunks(DELETES_PER_SEND) {
            let mut w = Builder::with_capacity(chunk.len() * 112);
            let first = self.seq.wrapping_add(1);
            for f in chunk {
                let seq = self.next_seq();
                encode_delete(&mut w, seq, family, f);
            }
            self.sock.reserve(w.bytes().len())?;
            self.sock.send_pages(&[w.bytes()])?;
            let (mut gone, mut failed) = (0usize, 0usize);
            // Handled inside sendmsg(): every failure reply is queued by now.
            while let Some(buf) = self.sock.recv(true)? {
                reply::dispatch(buf, &mut |r| {
                    if let Reply::Error { msg, errno, .. } = r {
                        if msg.seq.wrapping_sub(first) < chunk.len() as u32 {
                            match errno {
                                0 => {}
                                libc::ENOENT => gone += 1,
                                e => {
                                    failed += 1;
                                    first_error.get_or_insert(e);
                                }
                            }
                        }
                    }
                    Step::Next
                })?;
            }
            st.gone += gone;
            st.failed += failed;
            st.deleted += chunk.len() - gone - failed;
        }
        if let Some(errno) = first_error {
            tracing::warn!(
                failed = st.failed,
                error = %io::Error::from_raw_os_error(errno),
                "some conntrack deletes were refused"
            );
        }
        Ok(st)
    }

    /// Dumps the UDP entries of `family` and deletes those `filter` judges stale.
    pub fn clean_stale(
        &mut self,
        family: Family,
        filter: &StaleFilter,
    ) -> Result<CleanStats, CtError> {
        if filter.is_empty() {
            return Ok(CleanStats::default());
        }
        let (stale, examined) = self.udp_flows(family, &mut |f| filter.decide(f).delete())?;
        let mut st = self.delete(family, &stale)?;
        st.examined = examined;
        st.stale = stale.len();
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::wire::{messages, Msg};
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A conntrack message as the kernel dumps it (orig, reply, status, zone, id).
    fn kernel_msg(flow: &Flow, proto: u8) -> Vec<u8> {
        let mut w = Builder::new();
        w.begin_msg(
            msg_type(ct::IPCTNL_MSG_CT_NEW),
            c::NLM_F_MULTI,
            1,
            nfproto(Family::of(&flow.orig.src)),
            0,
        );
        put_tuple(
            &mut w,
            ct::CTA_TUPLE_ORIG,
            &flow.orig,
            proto,
            flow.orig_zone,
        );
        put_tuple(&mut w, ct::CTA_TUPLE_REPLY, &flow.reply, proto, None);
        w.u32_be(3, 0x188); // CTA_STATUS, ignored
        if let Some(z) = flow.zone {
            w.attr(ct::CTA_ZONE, &z.to_be_bytes());
        }
        if let Some(id) = flow.id {
            w.u32_be(ct::CTA_ID, id);
        }
        w.end_msg();
        w.bytes().to_vec()
    }

    fn sample(v6: bool) -> Flow {
        let (c, s, e) = if v6 {
            ("fd00:10:244:1::13", "fd00:10:96::10", "fd00:10:244:1::11")
        } else {
            ("10.244.1.13", "10.96.0.10", "10.244.1.11")
        };
        Flow {
            orig: Tuple {
                src: ip(c),
                dst: ip(s),
                sport: 41234,
                dport: 53,
            },
            reply: Tuple {
                src: ip(e),
                dst: ip(c),
                sport: 5353,
                dport: 41234,
            },
            zone: Some(7),
            orig_zone: None,
            id: Some(0xdead_beef),
        }
    }

    #[test]
    fn parses_what_the_kernel_dumps_both_families() {
        for v6 in [false, true] {
            let f = sample(v6);
            let buf = kernel_msg(&f, ct::IPPROTO_UDP);
            let msgs: Vec<Msg> = messages(&buf).collect();
            assert_eq!(msgs.len(), 1);
            assert_eq!(parse_flow(msgs[0].attrs()), Some(f));
            assert!(f.dnated());
        }
    }

    #[test]
    fn other_protocols_and_truncated_entries_are_skipped() {
        let f = sample(false);
        let buf = kernel_msg(&f, 6);
        let m = messages(&buf).next().unwrap();
        assert_eq!(parse_flow(m.attrs()), None);
        // No reply tuple.
        let mut w = Builder::new();
        w.begin_msg(0, 0, 0, 0, 0);
        put_tuple(&mut w, ct::CTA_TUPLE_ORIG, &f.orig, ct::IPPROTO_UDP, None);
        let m = messages(w.bytes()).next().unwrap();
        assert_eq!(parse_flow(m.attrs()), None);
    }

    #[test]
    fn delete_request_carries_the_original_tuple_zone_and_id() {
        let mut f = sample(true);
        f.orig_zone = Some(3);
        let mut w = Builder::new();
        encode_delete(&mut w, 9, Family::V6, &f);
        let m = messages(w.bytes()).next().unwrap();
        assert_eq!(m.ty, (1 << 8) | 2);
        assert_eq!(m.flags, c::NLM_F_REQUEST);
        assert_eq!(m.seq, 9);
        assert_eq!(m.family(), c::NFPROTO_IPV6);
        let a = m.attrs();
        let (t, proto, zone) = parse_tuple(a.nest(ct::CTA_TUPLE_ORIG).unwrap()).unwrap();
        assert_eq!((t, proto, zone), (f.orig, 17, Some(3)));
        assert!(a.get(ct::CTA_TUPLE_REPLY).is_none());
        assert_eq!(a.get(ct::CTA_ZONE), Some(&[0u8, 7][..]));
        assert_eq!(a.u32_be(ct::CTA_ID), Some(0xdead_beef));
        // Ports in network byte order.
        let p = a
            .nest(ct::CTA_TUPLE_ORIG)
            .unwrap()
            .nest(ct::CTA_TUPLE_PROTO)
            .unwrap();
        assert_eq!(
            p.get(ct::CTA_PROTO_DST_PORT),
            Some(&53u16.to_be_bytes()[..])
        );
    }

    /// Regression (tests/decode_fuzz.rs): an error code of i32::MIN made `-errno` panic
    /// ("attempt to negate with overflow").
    #[test]
    fn an_errno_of_i32_min_does_not_panic() {
        // NLMSG_DONE: header and the dump's result.
        let mut buf = 20u32.to_ne_bytes().to_vec();
        buf.extend_from_slice(&c::NLMSG_DONE.to_ne_bytes());
        buf.extend_from_slice(&c::NLM_F_MULTI.to_ne_bytes());
        buf.extend_from_slice(&1u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&i32::MIN.to_ne_bytes());
        let d = decode_dump(&buf, 1, Family::V4).unwrap();
        assert_eq!(d.end, Some(Err(i32::MIN)));
    }

    /// A reply cut short is an error: before, the rest of the buffer was skipped without
    /// a word, and a dump whose NLMSG_DONE was in it waited for replies that never came.
    #[test]
    fn a_broken_reply_is_an_error() {
        let flow = Flow {
            orig: Tuple {
                src: ip("10.0.0.1"),
                dst: ip("10.96.0.10"),
                sport: 1000,
                dport: 53,
            },
            reply: Tuple {
                src: ip("10.244.0.5"),
                dst: ip("10.0.0.1"),
                sport: 53,
                dport: 1000,
            },
            zone: None,
            orig_zone: None,
            id: Some(7),
        };
        let buf = kernel_msg(&flow, 17);
        let mut n = 0;
        let r = read_dump_buffer(&buf, 1, Family::V4, &mut false, &mut |_| n += 1);
        assert!(matches!(r, Ok(None)) && n == 1, "{r:?}");
        let r = read_dump_buffer(
            &buf[..buf.len() - 8],
            1,
            Family::V4,
            &mut false,
            &mut |_| {},
        );
        assert!(
            matches!(r, Err(CtError::Malformed { offset: 0, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn dump_request_filters_to_udp_or_not_at_all() {
        let buf = encode_dump(4, Family::V4, true);
        let m = messages(buf.bytes()).next().unwrap();
        assert_eq!(m.ty, (1 << 8) | 1);
        assert_eq!(m.flags, c::NLM_F_REQUEST | c::NLM_F_DUMP);
        assert_eq!(m.family(), c::NFPROTO_IPV4);
        let a = m.attrs();
        let proto = a
            .nest(ct::CTA_TUPLE_ORIG)
            .unwrap()
            .nest(ct::CTA_TUPLE_PROTO)
            .unwrap();
        assert_eq!(proto.get(ct::CTA_PROTO_NUM), Some(&[17u8][..]));
        let flags = a
            .nest(ct::CTA_FILTER)
            .unwrap()
            .get(ct::CTA_FILTER_ORIG_FLAGS)
            .unwrap();
        assert_eq!(flags, &(1u32 << 3).to_ne_bytes()[..]);

        let buf = encode_dump(5, Family::V6, false);
        let m = messages(buf.bytes()).next().unwrap();
        assert_eq!(m.family(), c::NFPROTO_IPV6);
        assert_eq!(m.attrs().count(), 0);
    }
}
