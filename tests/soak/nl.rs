//! The soak's own nf_tables netlink, just what it needs: a socket in the calling thread's
//! network namespace that receives the kernel's nftables change notifications
//! (`NFNLGRP_NFTABLES`, what `nft monitor` prints) and sends the neighbour's one-element
//! batches; the framing to read and write them (`linux/netfilter/nf_tables.h`,
//! `nfnetlink.h`).
//!
//! Why not `nft monitor`: it prints an element only if its own cache knows the set, and
//! in this setup it lost whole transactions to "Received event for an unknown set";
//! raw notifications carry table, set, key and data bytes and need no cache. Why not
//! `nft add element` for the neighbour: every `nft` run reads the cache of every table
//! first (kproxy's too: 120 ms at 1k services), so it cannot commit every 100 ms at 10k.
//!
//! `unsafe`: the socket calls (`socket`, `bind`, `setsockopt`, `poll`, `recv`, `send`),
//! each with its `// SAFETY:` reason, as in `kproxy::netlink::socket`, whose socket does
//! not join multicast groups.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NFNLGRP_NFTABLES: i32 = 7;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const SOL_NETLINK: i32 = 270;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NF_ACCEPT: u32 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NFT_SET_ELEM_INTERVAL_END: u32 = 1;

pub const NEWRULE: u16 = 6;
pub const DELRULE: u16 = 8;
pub const NEWSETELEM: u16 = 12;
pub const DELSETELEM: u16 = 14;
pub const NEWGEN: u16 = 15;
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;

/// A `NETLINK_NETFILTER` socket in the calling thread's network namespace.
pub struct Socket {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn setsockopt(fd: &OwnedFd, level: i32, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: a pointer to a live i32 and its exact size; the kernel only reads it.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &v as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    })
}

impl Socket {
    /// A socket for requests; with `notifications`, also a member of the nftables
    /// notification group with a 256 MiB receive buffer (a full sync at 50k notifies
    /// millions of elements).
    pub fn open(notifications: bool) -> io::Result<Socket> {
        // SAFETY: plain socket(2) with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        check(fd)?;
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is valid (autobind, no groups).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `sa` is a live sockaddr_nl and its exact size is passed.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        })?;
        if notifications {
            setsockopt(&fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)?;
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 256 << 20)?;
        }
        Ok(Socket {
            fd,
            buf: vec![0; 1 << 20],
            seq: 1,
        })
    }

    /// One datagram, or `None` after `ms` milliseconds without one. `ENOBUFS` (the
    /// receive buffer overran: notifications were lost) is an error.
    pub fn recv(&mut self, ms: i32) -> io::Result<Option<&[u8]>> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, count 1.
        check(unsafe { libc::poll(&mut p, 1, ms) })?;
        if p.revents == 0 {
            return Ok(None);
        }
        // SAFETY: `buf` is a live, writable allocation of `buf.len()` bytes.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr() as *mut libc::c_void,
                self.buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(&self.buf[..n as usize]))
    }

    /// Adds (or deletes) the single address `addr` in the interval set `set` of table
    /// `inet table`, in one transaction of its own, and waits for the kernel's answer.
    pub fn set_element(&mut self, table: &str, set: &str, addr: u32, add: bool) -> io::Result<()> {
        let (ty, flags) = if add {
            (NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK)
        } else {
            (DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        };
        let element = |b: &mut Vec<u8>| {
            attr(b, 1, &cstr(table));
            attr(b, 2, &cstr(set));
            nest(b, 3, |b| {
                // An address in an interval set: [addr, addr + 1).
                nest(b, 1, |b| {
                    nest(b, 1, |b| attr(b, 1, &addr.to_be_bytes()));
                });
                nest(b, 1, |b| {
                    nest(b, 1, |b| attr(b, 1, &(addr + 1).to_be_bytes()));
                    attr(b, 3, &NFT_SET_ELEM_INTERVAL_END.to_be_bytes());
                });
            });
        };
        self.transaction(&[(ty, flags, &element)])
    }

    /// Replaces every rule of chain `chain` of table `inet table` with one rule,
    /// `accept comment "COMMENT"`, in one transaction, and waits for the kernel's answer.
    pub fn replace_rules(&mut self, table: &str, chain: &str, comment: &str) -> io::Result<()> {
        let names = |b: &mut Vec<u8>| {
            attr(b, 1, &cstr(table));
            attr(b, 2, &cstr(chain));
        };
        // The rule's comment, as nft writes it: a userdata TLV (type 0, length, text).
        let mut udata = vec![0u8, (comment.len() + 1) as u8];
        udata.extend_from_slice(&cstr(comment));
        let rule = |b: &mut Vec<u8>| {
            names(b);
            nest(b, 4, |b| {
                nest(b, 1, |b| {
                    attr(b, 1, &cstr("immediate"));
                    nest(b, 2, |b| {
                        // The verdict register, and the verdict.
                        attr(b, 1, &0u32.to_be_bytes());
                        nest(b, 2, |b| {
                            nest(b, 2, |b| attr(b, 1, &NF_ACCEPT.to_be_bytes()));
                        });
                    });
                });
            });
            attr(b, 7, &udata);
        };
        self.transaction(&[
            // A DELRULE without a handle flushes the chain.
            (DELRULE, NLM_F_REQUEST | NLM_F_ACK, &names),
            (
                NEWRULE,
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK,
                &rule,
            ),
        ])
    }

    /// One batch of `(message type, flags, attributes)` on `inet` tables; waits for the
    /// kernel's answer to each message.
    fn transaction(&mut self, ops: &[Op<'_>]) -> io::Result<()> {
        let mut b = Vec::new();
        let first = self.seq;
        let end = first + 1 + ops.len() as u32;
        self.seq = end + 1;
        let subsys = NFNL_SUBSYS_NFTABLES;
        msg(
            &mut b,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first,
            0,
            subsys,
            |_| {},
        );
        for (i, (ty, flags, attrs)) in ops.iter().enumerate() {
            let seq = first + 1 + i as u32;
            msg(
                &mut b,
                subsys << 8 | ty,
                *flags,
                seq,
                NFPROTO_INET,
                0,
                attrs,
            );
        }
        msg(
            &mut b,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            end,
            0,
            subsys,
            |_| {},
        );
        // SAFETY: `b` is a live buffer of `b.len()` bytes the kernel only reads; an
        // unconnected netlink socket sends to the kernel.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                b.as_ptr() as *const libc::c_void,
                b.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut answered = 0;
        while answered < ops.len() {
            let Some(buf) = self.recv(5000)? else {
                return Err(io::Error::other("no answer to the batch in 5 s"));
            };
            for m in raw_messages(buf) {
                if m.ty == NLMSG_ERROR && m.seq > first && m.seq < end {
                    let errno = i32::from_ne_bytes(m.payload[..4].try_into().unwrap());
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    answered += 1;
                }
            }
        }
        Ok(())
    }
}

/// One message of a batch: its type within nf_tables, its flags, and what writes its
/// attributes.
type Op<'a> = (u16, u16, &'a dyn Fn(&mut Vec<u8>));

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn pad(b: &mut Vec<u8>) {
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

fn attr(b: &mut Vec<u8>, ty: u16, data: &[u8]) {
    b.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(data);
    pad(b);
}

fn nest(b: &mut Vec<u8>, ty: u16, f: impl FnOnce(&mut Vec<u8>)) {
    let start = b.len();
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    f(b);
    let len = (b.len() - start) as u16;
    b[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// A netlink message with an nfgenmsg header (`res_id` big-endian, as nfnetlink wants).
fn msg(
    b: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: impl FnOnce(&mut Vec<u8>),
) {
    let start = b.len();
    b.extend_from_slice(&[0; 4]);
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&[family, 0]);
    b.extend_from_slice(&res_id.to_be_bytes());
    attrs(b);
    let len = (b.len() - start) as u32;
    b[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

struct RawMsg<'a> {
    ty: u16,
    seq: u32,
    payload: &'a [u8],
}

fn raw_messages(mut buf: &[u8]) -> Vec<RawMsg<'_>> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        out.push(RawMsg {
            ty: u16::from_ne_bytes(buf[4..6].try_into().unwrap()),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            payload: &buf[16..len],
        });
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

/// An nf_tables message: its type within the subsystem, family and attributes.
pub struct Msg<'a> {
    pub ty: u16,
    pub family: u8,
    pub attrs: &'a [u8],
}

/// The nf_tables messages of a datagram.
pub fn messages(buf: &[u8]) -> Vec<Msg<'_>> {
    raw_messages(buf)
        .into_iter()
        .filter(|m| m.ty >> 8 == NFNL_SUBSYS_NFTABLES && m.payload.len() >= 4)
        .map(|m| Msg {
            ty: m.ty & 0xff,
            family: m.payload[0],
            attrs: &m.payload[4..],
        })
        .collect()
}

/// The attributes of a message or nest: `(type, payload)`.
pub fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    out
}

pub fn get<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == ty).map(|(_, d)| *d)
}

/// A string attribute without its NUL.
pub fn string(d: &[u8]) -> String {
    let end = d.iter().position(|b| *b == 0).unwrap_or(d.len());
    String::from_utf8_lossy(&d[..end]).into_owned()
}

/// The first four bytes of a nested `NFTA_DATA_VALUE` (an IPv4 address first).
pub fn value_v4(nest: &[u8]) -> Option<u32> {
    let v = get(&attrs(nest), 1)?;
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}
