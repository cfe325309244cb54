//! Netlink framing: message headers, attributes (TLVs), nests, and a parser for them.
//!
//! Owns: the byte layout every netlink family shares (`nlmsghdr`, `nfgenmsg`, `nlattr`
//! with nests and 4-byte alignment), in both directions: [`Builder`] builds requests with
//! libmnl (`mnl_nlmsg_put_header`, `mnl_attr_put*`, nests) — nf_tables' objects are built
//! by libnftnl in `backend::netlink`; [`messages`] and [`Attrs`] read (safe slice iterators: a dump
//! is read attribute by attribute, and a call into libmnl per attribute would cost more
//! than the bounds checks it replaces). Reading replies (errors, ACKs, the end of a dump)
//! is [`super::reply`]'s, on libmnl; [`framing_error`] is also its guard against libmnl
//! 1.0.4's message length check. The only `unsafe` is [`Builder`]'s libmnl calls.
//!
//! Must not: know any subsystem's messages or attributes (nf_tables' are in
//! `backend::netlink::nf_tables`, ctnetlink's in `conntrack::netlink`).

/// Netlink and nfnetlink constants (from `linux/netlink.h`, `linux/netfilter/nfnetlink.h`
/// and `linux/netfilter.h`), shared by every netfilter subsystem kproxy speaks.
#[allow(dead_code)]
pub mod c {
    pub const NLMSG_HDRLEN: usize = 16;
    pub const NFGENMSG_LEN: usize = 4;

    pub const NLMSG_NOOP: u16 = 1;
    pub const NLMSG_ERROR: u16 = 2;
    pub const NLMSG_DONE: u16 = 3;

    pub const NLM_F_REQUEST: u16 = 0x1;
    pub const NLM_F_MULTI: u16 = 0x2;
    pub const NLM_F_ACK: u16 = 0x4;
    pub const NLM_F_DUMP_INTR: u16 = 0x10;
    pub const NLM_F_ACK_TLVS: u16 = 0x200;
    pub const NLM_F_DUMP: u16 = 0x300;
    pub const NLM_F_EXCL: u16 = 0x200;
    pub const NLM_F_CREATE: u16 = 0x400;
    pub const NLM_F_APPEND: u16 = 0x800;

    pub const NLA_F_NESTED: u16 = 0x8000;
    pub const NLA_TYPE_MASK: u16 = 0x3fff;

    pub const NLMSGERR_ATTR_OFFS: u16 = 2;

    pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
    pub const NFNL_MSG_BATCH_END: u16 = 0x11;

    /// The nfnetlink multicast group of nftables' change notifications.
    pub const NFNLGRP_NFTABLES: u32 = 7;

    pub const NFPROTO_IPV4: u8 = 2;
    pub const NFPROTO_IPV6: u8 = 10;
}

/// Aligns to netlink's 4-byte boundary.
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Netlink messages built by libmnl (`mnl_nlmsg_put_header`, `mnl_nlmsg_put_extra_header`
/// for the `nfgenmsg`, `mnl_attr_put*`, `mnl_attr_nest_start`/`_end`), back to back in one
/// 4-byte aligned buffer that grows as needed: the requests of conntrack and of the
/// nftables reads and watch. (Its bytes equalled the hand-written writer's it replaced,
/// checked by a property test before that writer was deleted.)
///
/// libmnl writes through a `struct nlmsghdr *` with no bounds of its own: every call here
/// first makes room for what it adds, and derives that pointer from the buffer for that
/// call only. Positions kept between calls (the open message, a nest) are offsets.
#[derive(Default)]
pub struct Builder {
    /// The storage, as words for libmnl's alignment.
    words: Vec<u32>,
    /// Bytes in use.
    len: usize,
    /// Offset of the message being built.
    open: Option<usize>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }
    pub fn with_capacity(bytes: usize) -> Builder {
        Builder {
            words: Vec::with_capacity(bytes.div_ceil(4)),
            ..Builder::default()
        }
    }

    /// The messages built so far.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the words are initialised, `len` is at most their size in bytes, and any
        // initialised memory is valid `u8`s; the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) }
    }

    /// Makes room for `more` bytes after the used ones (zeroed) and returns the byte
    /// offset where they start.
    fn room(&mut self, more: usize) -> usize {
        let need = (self.len + more).div_ceil(4);
        if self.words.len() < need {
            self.words.resize(need, 0);
        }
        self.len
    }

    /// Runs a libmnl call on the open message with room for `more` bytes behind it, then
    /// takes the message's new length from its header. The call gets the buffer's start
    /// and the message's header (4-byte aligned: messages start at aligned offsets).
    fn put(&mut self, more: usize, f: impl FnOnce(*mut u8, *mut libc::nlmsghdr)) {
        let open = self.open.expect("an attribute outside a message");
        self.room(align4(more));
        let base = self.words.as_mut_ptr() as *mut u8;
        f(base, base.wrapping_add(open) as *mut libc::nlmsghdr);
        self.len = open + align4(self.words[open / 4] as usize);
    }

    /// Starts an nfnetlink message (header and nfgenmsg); [`Builder::end_msg`] ends it.
    pub fn begin_msg(&mut self, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        let at = self.room(c::NLMSG_HDRLEN + c::NFGENMSG_LEN);
        self.open = Some(at);
        let nlh = (self.words.as_mut_ptr() as *mut u8).wrapping_add(at) as *mut libc::c_void;
        // SAFETY: `nlh` points at `room`'s zeroed, aligned space for the header and the
        // nfgenmsg, which is all the two calls write; no reference to it is alive.
        unsafe {
            let h = mnl::mnl_sys::mnl_nlmsg_put_header(nlh);
            (*h).nlmsg_type = ty;
            (*h).nlmsg_flags = flags;
            (*h).nlmsg_seq = seq;
            let g = mnl::mnl_sys::mnl_nlmsg_put_extra_header(h, c::NFGENMSG_LEN) as *mut u8;
            *g = family;
            // NFNETLINK_V0, then the resource id in network byte order.
            *g.add(1) = 0;
            std::ptr::copy_nonoverlapping(res_id.to_be_bytes().as_ptr(), g.add(2), 2);
        }
        self.len = at + c::NLMSG_HDRLEN + c::NFGENMSG_LEN;
    }

    /// Ends the open message (its length is already right: libmnl keeps it).
    pub fn end_msg(&mut self) {
        self.open = None;
    }

    pub fn attr(&mut self, ty: u16, data: &[u8]) {
        debug_assert!(data.len() + 4 <= u16::MAX as usize);
        // SAFETY: `put` made room for the attribute and its padding behind the open
        // message; `data` is live for the call and only read.
        self.put(4 + data.len(), |_, nlh| unsafe {
            mnl::mnl_sys::mnl_attr_put(nlh, ty, data.len(), data.as_ptr() as *const _)
        });
    }
    pub fn u8(&mut self, ty: u16, v: u8) {
        // SAFETY: `put` made room for the attribute and its padding.
        self.put(8, |_, nlh| unsafe {
            mnl::mnl_sys::mnl_attr_put_u8(nlh, ty, v)
        });
    }
    pub fn u32_be(&mut self, ty: u16, v: u32) {
        // SAFETY: `put` made room for the attribute.
        self.put(8, |_, nlh| unsafe {
            mnl::mnl_sys::mnl_attr_put_u32(nlh, ty, v.to_be())
        });
    }
    /// A NUL-terminated string attribute.
    pub fn str(&mut self, ty: u16, s: &str) {
        let mut z = Vec::with_capacity(s.len() + 1);
        z.extend_from_slice(s.as_bytes());
        z.push(0);
        self.attr(ty, &z);
    }
    /// Starts a nest (`NLA_F_NESTED` set); returns its offset for [`Builder::nest_end`].
    pub fn nest_begin(&mut self, ty: u16) -> usize {
        let at = self.len;
        // SAFETY: `put` made room for the nest's header.
        self.put(4, |_, nlh| unsafe {
            mnl::mnl_sys::mnl_attr_nest_start(nlh, ty);
        });
        at
    }
    pub fn nest_end(&mut self, start: usize) {
        let open = self.open.expect("a nest outside a message");
        assert!(
            start >= open + c::NLMSG_HDRLEN && start + 4 <= self.len && start.is_multiple_of(4)
        );
        debug_assert!(self.len - start <= u16::MAX as usize);
        // SAFETY: `start` is the offset of a nest header of the open message (checked
        // above), inside the buffer; libmnl writes its length field only.
        self.put(0, |base, nlh| unsafe {
            mnl::mnl_sys::mnl_attr_nest_end(nlh, base.add(start) as *mut libc::nlattr)
        });
    }
}

/// One netlink message of a received buffer.
#[derive(Clone, Copy, Debug)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// `nlmsg_pid`: in a message from the kernel, the port id of the socket whose request
    /// caused it (a notification names the socket that committed).
    pub port: u32,
    /// Everything after the netlink header.
    pub payload: &'a [u8],
    /// The whole message, header included (what libnftnl's parsers take).
    pub raw: &'a [u8],
}

impl<'a> Msg<'a> {
    /// nf_tables attributes (after the 4-byte nfgenmsg).
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs::new(self.payload.get(c::NFGENMSG_LEN..).unwrap_or(&[]))
    }
    pub fn family(&self) -> u8 {
        self.payload.first().copied().unwrap_or(0)
    }
}

impl<'a> Msg<'a> {
    /// The message at the start of `buf` and its length with padding (which the last
    /// message of a buffer may leave out), or `None` when its header is broken.
    pub fn parse(buf: &'a [u8]) -> Option<(Msg<'a>, usize)> {
        let h = buf.get(..c::NLMSG_HDRLEN)?;
        let word = |at: usize| u32::from_ne_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let len = word(0) as usize;
        if len < c::NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let m = Msg {
            ty: u16::from_ne_bytes([h[4], h[5]]),
            flags: u16::from_ne_bytes([h[6], h[7]]),
            seq: word(8),
            port: word(12),
            payload: &buf[c::NLMSG_HDRLEN..len],
            raw: &buf[..len],
        };
        Some((m, align4(len).min(buf.len())))
    }
}

/// Iterates over the netlink messages in `buf`. Stops at the first malformed header.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Msg<'_>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let (m, adv) = Msg::parse(rest)?;
        rest = &rest[adv..];
        Some(m)
    })
}

/// The offset of the first malformed message header in `buf` (a length shorter than a
/// header or running past the end, or bytes after the last message that do not make a
/// header), `None` when `buf` is whole messages back to back. [`messages`] stops at that
/// offset without a word; a reader that must not miss a message checks this first.
pub fn framing_error(buf: &[u8]) -> Option<usize> {
    let mut off = 0usize;
    while off < buf.len() {
        let rest = &buf[off..];
        if rest.len() < c::NLMSG_HDRLEN {
            return Some(off);
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < c::NLMSG_HDRLEN || rest.len() < len {
            return Some(off);
        }
        // The last message's padding may be left out.
        off = off.saturating_add(align4(len)).min(buf.len());
    }
    None
}

/// Iterator over the attributes of a message or nest: `(type without flags, payload)`.
#[derive(Clone)]
pub struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Attrs<'a> {
        Attrs { buf }
    }
    /// The first attribute of this type.
    pub fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.clone().find(|(t, _)| *t == ty).map(|(_, d)| d)
    }
    pub fn nest(&self, ty: u16) -> Option<Attrs<'a>> {
        self.get(ty).map(Attrs::new)
    }
    pub fn u32_be(&self, ty: u16) -> Option<u32> {
        self.get(ty).and_then(be32)
    }
    pub fn u64_be(&self, ty: u16) -> Option<u64> {
        self.get(ty)
            .and_then(|d| d.get(..8))
            .map(|d| u64::from_be_bytes(d.try_into().unwrap()))
    }
    pub fn str(&self, ty: u16) -> Option<String> {
        self.get(ty).map(cstr)
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & c::NLA_TYPE_MASK;
        if len < 4 || len > self.buf.len() {
            self.buf = &[];
            return None;
        }
        let data = &self.buf[4..len];
        let adv = align4(len).min(self.buf.len());
        self.buf = &self.buf[adv..];
        Some((ty, data))
    }
}

pub fn be32(d: &[u8]) -> Option<u32> {
    d.get(..4)
        .map(|d| u32::from_be_bytes(d.try_into().unwrap()))
}

/// A string attribute without its NUL terminator (and anything after it).
pub fn cstr(d: &[u8]) -> String {
    let end = d.iter().position(|&b| b == 0).unwrap_or(d.len());
    String::from_utf8_lossy(&d[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_roundtrip() {
        let mut w = Builder::new();
        w.begin_msg(0x0a00, c::NLM_F_REQUEST, 7, 2, 0);
        w.str(1, "kproxy");
        let n = w.nest_begin(4);
        w.u32_be(1, 3);
        w.attr(2, &[1, 2, 3]);
        w.nest_end(n);
        w.end_msg();
        let msgs: Vec<Msg> = messages(w.bytes()).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].seq, 7);
        let a = msgs[0].attrs();
        assert_eq!(a.str(1).as_deref(), Some("kproxy"));
        let n = a.nest(4).unwrap();
        assert_eq!(n.u32_be(1), Some(3));
        assert_eq!(n.get(2), Some(&[1u8, 2, 3][..]));
    }

    #[test]
    fn framing_errors_are_found() {
        let mut w = Builder::new();
        for seq in 0..3 {
            w.begin_msg(0x0a00, 0, seq, 2, 0);
            w.str(1, "abc");
            w.end_msg();
        }
        let buf = w.bytes().to_vec();
        assert_eq!(framing_error(&buf), None);
        assert_eq!(framing_error(&[]), None);
        // Cut anywhere but at a message boundary.
        let one = buf.len() / 3;
        for cut in 1..buf.len() {
            let want = (cut % one != 0).then_some(cut / one * one);
            assert_eq!(framing_error(&buf[..cut]), want, "cut at {cut}");
        }
        let mut bad = buf.clone();
        bad[one..one + 4].copy_from_slice(&15u32.to_ne_bytes());
        assert_eq!(framing_error(&bad), Some(one));
        bad[one..one + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(framing_error(&bad), Some(one));
    }
}
