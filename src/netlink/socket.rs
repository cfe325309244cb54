//! The netlink socket: a `NETLINK_NETFILTER` socket over raw `libc` calls (open, socket
//! options, one-`sendmsg` batches, `recv`, `poll`), and entering a network namespace.
//!
//! Owns: the file descriptor and its receive buffer, the socket's port id, and multicast
//! group membership (the nftables change notifications are group `NFNLGRP_NFTABLES`). A
//! socket can be shared by two threads through [`NlSocket::try_clone`] (one receives, the
//! other sends requests and changes memberships; the kernel serialises both). Every
//! `unsafe` block has its `// SAFETY:` reason; where else kproxy has `unsafe`, and why, is
//! in [`crate::netlink`].
//!
//! Must not: build or parse messages (that is [`super::wire`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_NETFILTER: i32 = 12;
const SOL_NETLINK: i32 = 270;
const NETLINK_EXT_ACK: i32 = 11;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_DROP_MEMBERSHIP: i32 = 2;

/// Receive buffer for one `recv()`: a dump skb is at most 32 KiB (more with a large
/// `max_recvmsg_len`); 1 MiB never truncates.
const RECV_BUF: usize = 1 << 20;

pub struct NlSocket {
    fd: OwnedFd,
    buf: Vec<u8>,
    sndbuf: usize,
}

impl NlSocket {
    /// Opens a `NETLINK_NETFILTER` socket in the calling thread's network namespace, with
    /// `NETLINK_CAP_ACK` (errors do not echo the whole request) and `NETLINK_EXT_ACK`
    /// (errors carry the offset of the offending attribute), bound at once so that it has
    /// its port id ([`NlSocket::port_id`]) before it sends anything.
    pub fn open() -> io::Result<NlSocket> {
        // SAFETY: plain socket(2) call with constant arguments; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let s = NlSocket {
            fd,
            buf: vec![0; RECV_BUF],
            sndbuf: 0,
        };
        s.setsockopt_i32(SOL_NETLINK, NETLINK_CAP_ACK, 1)?;
        // Extended ACKs are optional (kernel >= 4.12).
        let _ = s.setsockopt_i32(SOL_NETLINK, NETLINK_EXT_ACK, 1);
        s.bind()?;
        Ok(s)
    }

    /// Binds to port id 0: the kernel picks a free one (the process id for the process's
    /// first netlink socket).
    fn bind(&self) -> io::Result<()> {
        // SAFETY: an all-zero sockaddr_nl is valid (port 0 = "choose", no groups).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: passes a pointer to a live sockaddr_nl and its exact size; the kernel only
        // reads it.
        let r = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// The port id the kernel gave this socket: the `nlmsg_pid` of every message it sends,
    /// which is how nftables' change notifications name the socket that committed.
    pub fn port_id(&self) -> io::Result<u32> {
        // SAFETY: an all-zero sockaddr_nl is valid; getsockname fills it.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `addr` and `len` are live and `len` is `addr`'s size; the kernel writes at
        // most `len` bytes.
        let r = unsafe {
            libc::getsockname(
                self.fd.as_raw_fd(),
                &mut addr as *mut libc::sockaddr_nl as *mut libc::sockaddr,
                &mut len,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(addr.nl_pid)
    }

    /// A second handle on the same socket (a duplicated descriptor), with its own receive
    /// buffer: one thread receives on one handle while another sends on the other.
    pub fn try_clone(&self) -> io::Result<NlSocket> {
        Ok(NlSocket {
            fd: self.fd.try_clone()?,
            buf: vec![0; RECV_BUF],
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
        self.setsockopt_i32(SOL_NETLINK, opt, group as i32)
    }

    /// Raises the receive buffer to `bytes` (`SO_RCVBUFFORCE` as root, else capped by
    /// `rmem_max`). Memory is only used while messages wait in it.
    pub fn set_recv_buffer(&self, bytes: usize) -> io::Result<()> {
        self.raise(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, bytes)
    }

    fn setsockopt_i32(&self, level: i32, opt: i32, v: i32) -> io::Result<()> {
        // SAFETY: passes a pointer to a live i32 and its exact size; the kernel only reads it.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
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
        self.setsockopt_i32(libc::SOL_SOCKET, force, v)
            .or_else(|_| self.setsockopt_i32(libc::SOL_SOCKET, plain, v))
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

    /// Sends all pages as one datagram (one `sendmsg()` with one iovec per page).
    pub fn send_pages(&self, pages: &[Vec<u8>]) -> io::Result<usize> {
        let mut iov: Vec<libc::iovec> = pages
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = iov.as_mut_ptr();
        mh.msg_iovlen = iov.len() as _;
        // SAFETY: `mh` points at `iov`, whose entries point into `pages`; all outlive the
        // call and the kernel only reads them. No name: the kernel (portid 0) is the peer.
        let n = unsafe { libc::sendmsg(self.fd.as_raw_fd(), &mh, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Receives one datagram. `Ok(None)` when `nonblocking` and nothing is queued.
    pub fn recv(&mut self, nonblocking: bool) -> io::Result<Option<&[u8]>> {
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            // SAFETY: `buf` is a live, writable allocation of `buf.len()` bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    flags,
                )
            };
            if n >= 0 {
                return Ok(Some(&self.buf[..n as usize]));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) if nonblocking => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    /// Waits up to `ms` milliseconds for something to read.
    pub fn wait_readable(&self, ms: i32) -> io::Result<bool> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, count 1.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r > 0)
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
