//! The netlink socket: a `NETLINK_NETFILTER` socket on libmnl (`mnl_socket_open2`,
//! `mnl_socket_bind`, `mnl_socket_setsockopt`, `mnl_socket_get_portid`,
//! `mnl_socket_recvfrom`, `mnl_socket_fdopen` for a second handle), the socket-buffer
//! sizing, the one-`sendmsg` batch, `poll`, and entering a network namespace.
//!
//! Owns: the libmnl socket handle (closed on drop) and its receive buffer, the socket's
//! port id, and multicast group membership (the nftables change notifications are group
//! `NFNLGRP_NFTABLES`). A socket can be shared by two threads through
//! [`NlSocket::try_clone`] (one receives, the other sends requests and changes
//! memberships; the kernel serialises both).
//!
//! One call is not libmnl's: a whole nftables batch must go out in ONE `sendmsg()` with
//! every page as an iovec (nfnetlink processes one skb per batch; `mnl_socket_sendto`
//! takes one buffer, and the `mnl` crate's `send_all` is one `sendto` per page, which
//! breaks a batch larger than a page). libmnl has no `sendmsg`, so [`NlSocket::send_pages`]
//! calls it on the libmnl socket's descriptor. The same goes for the `SOL_SOCKET` buffer
//! options (`mnl_socket_setsockopt` is `SOL_NETLINK` only) and `poll`.
//!
//! The descriptor is non-blocking (`SOCK_NONBLOCK`: `mnl_socket_recvfrom` takes no flags);
//! a blocking [`NlSocket::recv`] waits in `poll`.
//!
//! Every `unsafe` block has its `// SAFETY:` reason; no raw pointer leaves this module.
//! Where else kproxy has `unsafe`, and why, is in [`crate::netlink`].
//!
//! Must not: build or parse messages (that is [`super::wire`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, RawFd};
use std::ptr::NonNull;

use mnl::mnl_sys;

const NETLINK_EXT_ACK: i32 = 11;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_DROP_MEMBERSHIP: i32 = 2;

/// Receive buffer for one `recv()`: a dump skb is at most 32 KiB (more with a large
/// `max_recvmsg_len`); 1 MiB never truncates.
const RECV_BUF: usize = 1 << 20;

/// libmnl's socket handle (`struct mnl_socket`: the descriptor and its bound address),
/// owned: closed (descriptor and handle) on drop.
struct Mnl(NonNull<mnl_sys::mnl_socket>);

// SAFETY: a `struct mnl_socket` is a descriptor and its address, written only when it is
// created and read by every later call; libmnl keeps no other state and nothing tied to a
// thread, so the handle may move to another thread (the drift watch's drain thread).
unsafe impl Send for Mnl {}

impl Mnl {
    fn new(ptr: *mut mnl_sys::mnl_socket) -> io::Result<Mnl> {
        NonNull::new(ptr)
            .map(Mnl)
            .ok_or_else(io::Error::last_os_error)
    }

    fn fd(&self) -> RawFd {
        // SAFETY: the handle is live (owned by `self`); the call only reads it.
        unsafe { mnl_sys::mnl_socket_get_fd(self.0.as_ptr()) }
    }
}

impl Drop for Mnl {
    fn drop(&mut self) {
        // SAFETY: the handle is live and owned by `self`, and is not used again.
        unsafe { mnl_sys::mnl_socket_close(self.0.as_ptr()) };
    }
}

/// A receive buffer whose bytes from [`Aligned::start`] are 4-byte aligned, as libmnl's
/// `struct nlmsghdr` casts need.
struct Aligned {
    buf: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> Aligned {
        let buf = vec![0; RECV_BUF + 3];
        let start = (4 - buf.as_ptr() as usize % 4) % 4;
        Aligned { buf, start }
    }
    fn bytes(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + RECV_BUF]
    }
}

pub struct NlSocket {
    sock: Mnl,
    buf: Aligned,
    sndbuf: usize,
}

impl NlSocket {
    /// Opens a `NETLINK_NETFILTER` socket in the calling thread's network namespace, with
    /// `NETLINK_CAP_ACK` (errors do not echo the whole request) and `NETLINK_EXT_ACK`
    /// (errors carry the offset of the offending attribute), bound at once (port id chosen
    /// by the kernel: [`NlSocket::port_id`]) so that it has its port id before it sends.
    pub fn open() -> io::Result<NlSocket> {
        // SAFETY: plain call with constant arguments; the result is checked by `Mnl::new`.
        let sock = Mnl::new(unsafe {
            mnl_sys::mnl_socket_open2(
                libc::NETLINK_NETFILTER,
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        })?;
        let s = NlSocket {
            sock,
            buf: Aligned::new(),
            sndbuf: 0,
        };
        s.netlink_opt(NETLINK_CAP_ACK, 1)?;
        // Extended ACKs are optional (kernel >= 4.12).
        let _ = s.netlink_opt(NETLINK_EXT_ACK, 1);
        // SAFETY: the handle is live; port id 0 (MNL_SOCKET_AUTOPID) lets the kernel choose.
        let r =
            unsafe { mnl_sys::mnl_socket_bind(s.sock.0.as_ptr(), 0, mnl_sys::MNL_SOCKET_AUTOPID) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(s)
    }

    /// The port id the kernel gave this socket: the `nlmsg_pid` of every message it sends,
    /// which is how nftables' change notifications name the socket that committed.
    pub fn port_id(&self) -> io::Result<u32> {
        // SAFETY: the handle is live; the call reads the address libmnl stored at bind.
        Ok(unsafe { mnl_sys::mnl_socket_get_portid(self.sock.0.as_ptr()) })
    }

    /// A second handle on the same socket (a duplicated descriptor in a handle of its own,
    /// `mnl_socket_fdopen`), with its own receive buffer: one thread receives on one handle
    /// while another sends on the other.
    pub fn try_clone(&self) -> io::Result<NlSocket> {
        // SAFETY: the descriptor is open for as long as `self` lives, which outlasts this
        // borrow (it is only duplicated).
        let dup = unsafe { BorrowedFd::borrow_raw(self.sock.fd()) }.try_clone_to_owned()?;
        // SAFETY: `dup` is an open netlink socket descriptor; on success libmnl owns it (it
        // is released from `dup` below), on failure `dup` still does and closes it.
        let sock = Mnl::new(unsafe { mnl_sys::mnl_socket_fdopen(dup.as_raw_fd()) })?;
        let _ = dup.into_raw_fd();
        Ok(NlSocket {
            sock,
            buf: Aligned::new(),
            sndbuf: self.sndbuf,
        })
    }

    /// Joins (`true`) or leaves multicast group `group`. Messages already queued stay.
    pub fn membership(&self, group: u32, join: bool) -> io::Result<()> {
        let opt = if join {
            NETLINK_ADD_MEMBERSHIP
        } else {
            NETLINK_DROP_MEMBERSHIP
        };
        self.netlink_opt(opt, group as i32)
    }

    /// Raises the receive buffer to `bytes` (`SO_RCVBUFFORCE` as root, else capped by
    /// `rmem_max`). Memory is only used while messages wait in it.
    pub fn set_recv_buffer(&self, bytes: usize) -> io::Result<()> {
        self.raise(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, bytes)
    }

    /// A `SOL_NETLINK` option, through libmnl.
    fn netlink_opt(&self, opt: i32, mut v: i32) -> io::Result<()> {
        // SAFETY: the handle is live; passes a pointer to a live i32 and its exact size,
        // which the kernel only reads.
        let r = unsafe {
            mnl_sys::mnl_socket_setsockopt(
                self.sock.0.as_ptr(),
                opt,
                &mut v as *mut i32 as *mut libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// A `SOL_SOCKET` option (libmnl sets `SOL_NETLINK` ones only).
    fn socket_opt(&self, opt: i32, v: i32) -> io::Result<()> {
        // SAFETY: passes a pointer to a live i32 and its exact size; the kernel only reads it.
        let r = unsafe {
            libc::setsockopt(
                self.sock.fd(),
                libc::SOL_SOCKET,
                opt,
                &v as *const i32 as *const libc::c_void,
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Raises a socket buffer: `*BUFFORCE` (root, ignores `rmem_max`/`wmem_max`), else the
    /// plain option (capped by the sysctl).
    fn raise(&self, force: i32, plain: i32, bytes: usize) -> io::Result<()> {
        let v = bytes.min(i32::MAX as usize / 2) as i32;
        self.socket_opt(force, v)
            .or_else(|_| self.socket_opt(plain, v))
    }

    /// Makes room for a batch of `bytes` (the whole batch must fit in one skb) and for the
    /// replies to it.
    pub fn reserve(&mut self, bytes: usize) -> io::Result<()> {
        let want = bytes + 64 * 1024;
        if want > self.sndbuf {
            self.raise(libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, want)?;
            self.raise(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, want.max(4 << 20))?;
            self.sndbuf = want;
        }
        Ok(())
    }

    /// Sends all pages as one datagram: one `sendmsg()` with one iovec per page, on the
    /// libmnl socket's descriptor (see the module doc: libmnl has no `sendmsg`).
    pub fn send_pages<P: AsRef<[u8]>>(&self, pages: &[P]) -> io::Result<usize> {
        let mut iov: Vec<libc::iovec> = pages
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ref().as_ptr() as *mut libc::c_void,
                iov_len: p.as_ref().len(),
            })
            .collect();
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = iov.as_mut_ptr();
        mh.msg_iovlen = iov.len() as _;
        loop {
            // SAFETY: `mh` points at `iov`, whose entries point into `pages`; all outlive
            // the call and the kernel only reads them. No name: the kernel (port id 0) is
            // the peer.
            let n = unsafe { libc::sendmsg(self.sock.fd(), &mh, 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // A full receive queue of a kernel socket does not make the sender wait,
                // but a non-blocking descriptor may say so: wait until it can send.
                Some(libc::EAGAIN) => {
                    self.poll(libc::POLLOUT, -1)?;
                }
                _ => return Err(e),
            }
        }
    }

    /// Receives one datagram (`mnl_socket_recvfrom`). `Ok(None)` when `nonblocking` and
    /// nothing is queued. The bytes start 4-byte aligned.
    pub fn recv(&mut self, nonblocking: bool) -> io::Result<Option<&[u8]>> {
        loop {
            let buf = self.buf.bytes();
            // SAFETY: the handle is live; `buf` is a live, writable allocation of
            // `buf.len()` bytes, which the call writes at most.
            let n = unsafe {
                mnl_sys::mnl_socket_recvfrom(
                    self.sock.0.as_ptr(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if n >= 0 {
                let n = n as usize;
                return Ok(Some(&self.buf.bytes()[..n]));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) if nonblocking => return Ok(None),
                Some(libc::EAGAIN) => {
                    self.poll(libc::POLLIN, -1)?;
                }
                _ => return Err(e),
            }
        }
    }

    /// Waits up to `ms` milliseconds for something to read.
    pub fn wait_readable(&self, ms: i32) -> io::Result<bool> {
        self.poll(libc::POLLIN, ms)
    }

    /// Waits up to `ms` milliseconds (-1: no limit) for `events`; false on timeout. An
    /// interrupted wait is retried (with the whole timeout).
    fn poll(&self, events: i16, ms: i32) -> io::Result<bool> {
        let mut p = libc::pollfd {
            fd: self.sock.fd(),
            events,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd, count 1.
            let r = unsafe { libc::poll(&mut p, 1, ms) };
            if r >= 0 {
                return Ok(r > 0);
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) || ms >= 0 {
                return Err(e);
            }
        }
    }
}

/// Moves the calling thread into the network namespace at `path` (e.g.
/// `/var/run/netns/NAME`). Test seam: kernel tests run a backend in a throwaway namespace
/// from a dedicated thread, so the host's ruleset is never touched.
#[cfg(any(test, feature = "test-util"))]
pub fn enter_netns(path: &std::path::Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    // SAFETY: `f` is an open namespace file descriptor for the duration of the call;
    // setns(2) only affects the calling thread.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::reply::{dispatch, error, Reply, Step};
    use crate::netlink::wire::{c, Builder};
    use crate::testutil::{is_root, Netns};

    /// nf_tables' GETTABLE (subsystem 10, message 1) of the `ip` table `name`.
    fn get_table(seq: u32, name: &str) -> Builder {
        let mut w = Builder::new();
        w.begin_msg((10 << 8) | 1, c::NLM_F_REQUEST, seq, c::NFPROTO_IPV4, 0);
        w.str(1, name); // NFTA_TABLE_NAME
        w.end_msg();
        w
    }

    /// The replies to request `seq`: `(errno, extended-ACK offset)` of its NLMSG_ERROR.
    fn error_of(sock: &mut NlSocket, seq: u32) -> (i32, Option<u32>) {
        loop {
            let buf = sock.recv(false).unwrap().unwrap();
            let mut got = None;
            dispatch(buf, &mut |r| {
                if let Reply::Error { msg, errno } = r {
                    if msg.seq == seq {
                        got = Some((errno, error(&msg).1));
                        return Step::Stop;
                    }
                }
                Step::Next
            })
            .unwrap();
            if let Some(g) = got {
                return g;
            }
        }
    }

    /// A request the kernel refuses: the reply names the errno, and with an attribute the
    /// kernel's policy rejects, the extended ACK's offset points at it in the request.
    #[test]
    fn a_refused_request_names_the_errno_and_the_attribute() {
        if !is_root() {
            println!("skipping: needs root for a network namespace");
            return;
        }
        let ns = Netns::new("mnl-err");
        let (missing, bad) = ns.run_in(|| {
            let mut s = NlSocket::open().unwrap();
            s.send_pages(&[get_table(5, "nope").bytes()]).unwrap();
            let missing = error_of(&mut s, 5);
            // NFTA_TABLE_NAME longer than NFT_NAME_MAXLEN - 1: policy violation.
            s.send_pages(&[get_table(6, &"x".repeat(300)).bytes()])
                .unwrap();
            (missing, error_of(&mut s, 6))
        });
        // Both name NFTA_TABLE_NAME: after the 16-byte header and the nfgenmsg.
        assert_eq!(missing, (libc::ENOENT, Some(20)));
        assert_eq!(bad, (libc::ERANGE, Some(20)));
    }

    /// The second handle is the same socket (same port id; a request sent on one is
    /// answered on the other); both descriptors are close-on-exec and non-blocking.
    #[test]
    fn a_clone_is_the_same_socket() {
        if !is_root() {
            println!("skipping: needs root for a network namespace");
            return;
        }
        let ns = Netns::new("mnl-clone");
        ns.run_in(|| {
            let a = NlSocket::open().unwrap();
            let mut b = a.try_clone().unwrap();
            assert_eq!(a.port_id().unwrap(), b.port_id().unwrap());
            assert_ne!(a.port_id().unwrap(), 0);
            assert_eq!(b.recv(true).unwrap(), None, "nothing queued: no wait");
            a.send_pages(&[get_table(9, "nope").bytes()]).unwrap();
            assert!(b.wait_readable(1000).unwrap());
            assert_eq!(error_of(&mut b, 9).0, libc::ENOENT);
            for s in [&a, &b] {
                let info =
                    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", s.sock.fd())).unwrap();
                let flags = info
                    .lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
                    .unwrap();
                assert_ne!(flags & libc::O_CLOEXEC as u32, 0, "{info}");
                assert_ne!(flags & libc::O_NONBLOCK as u32, 0, "{info}");
            }
            drop(a);
            // The clone keeps the socket open.
            b.send_pages(&[get_table(10, "nope").bytes()]).unwrap();
            assert_eq!(error_of(&mut b, 10).0, libc::ENOENT);
        });
    }
}
